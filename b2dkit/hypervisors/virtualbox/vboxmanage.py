"""The one place b2dkit runs VBoxManage: finding it, running it, and parsing what it prints.

Everything above this module gets parsed data (``VMInfo``, lists of names) or a typed
error with advice, never raw text.  The rules come from the reference
(``vboxmanage-and-boot2docker.md`` §2.5, §2.6, §4): VBoxManage sometimes exits 0 while
printing ``VBoxManage: error:``, some errors are transient and worth a bounded retry, and
``showvminfo --machinereadable`` is a loosely quoted format with irregular lines.
"""

import locale
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ... import install
from ...errors import HypervisorError, InputError, PortInUse, ToolMissing, VMNotFound
from ...forwards import Forward
from ...paths import StrPath
from ..base import VMState

# Streams a command's input into its stdin (convertfromraw); called again on a retry.
StdinWriter = Callable[[IO[bytes]], object]

# --------------------------------------------------------------------------------------------
# Finding the program
# --------------------------------------------------------------------------------------------

_INSTALL_HINT = (
    install.hint("virtualbox") + " (others: https://www.virtualbox.org/wiki/Downloads), or put VBoxManage on PATH"
)


def find_vboxmanage() -> str:
    """Absolute path of VBoxManage: PATH first, then where the installers put it."""
    for name in ("VBoxManage", "vboxmanage"):
        found = shutil.which(name)
        if found:
            return found
    candidates = []
    # Windows installers set these; the .exe is not on PATH by default.
    for var in ("VBOX_MSI_INSTALL_PATH", "VBOX_INSTALL_PATH"):
        value = os.environ.get(var)
        if value:
            for folder in value.split(os.pathsep):
                if folder:
                    candidates.append(Path(folder) / "VBoxManage.exe")
    install_dir = _windows_install_dir()
    if install_dir:
        candidates.append(Path(install_dir) / "VBoxManage.exe")
    candidates += [
        Path("/Applications/VirtualBox.app/Contents/MacOS/VBoxManage"),
        Path("/usr/local/bin/VBoxManage"),
        Path(r"C:\Program Files\Oracle\VirtualBox\VBoxManage.exe"),
        # WSL: the Windows VirtualBox, through the C: drive mount (Vagrant's WSL support)
        Path("/mnt/c/Program Files/Oracle/VirtualBox/VBoxManage.exe"),
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    raise ToolMissing(f"VBoxManage not found: {_INSTALL_HINT}")


def _windows_install_dir() -> Optional[str]:
    """``HKLM\\SOFTWARE\\Oracle\\VirtualBox\\InstallDir`` (docker-machine's vbm_windows.go)."""
    if sys.platform != "win32":
        return None
    try:
        import winreg

        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"SOFTWARE\Oracle\VirtualBox") as key:
            return str(winreg.QueryValueEx(key, "InstallDir")[0])
    except OSError:
        return None


# --------------------------------------------------------------------------------------------
# Errors: a small catalogue of what VBoxManage says and what the user should do about it
# --------------------------------------------------------------------------------------------


class VBoxError(HypervisorError):
    """VBoxManage failed; carries the command, its exit status and stderr for debugging."""

    def __init__(
        self,
        message: str,
        hint: Optional[str] = None,
        argv: Sequence[str] = (),
        returncode: Optional[int] = None,
        stderr: str = "",
    ) -> None:
        super().__init__(message, hint)
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


class VMNotRegistered(VBoxError, VMNotFound):
    """``Could not find a registered machine named 'X'``."""


class VBoxLocked(VBoxError):
    """Another session holds the VM: it is running, or a second VBoxManage/GUI races us."""


class ObjectNotReady(VBoxError):
    """``The object is not ready``: VBoxSVC was busy; docker-machine retries it 5 x 100 ms."""


class RuleExists(VBoxError):
    """A NAT rule with this name (or this host IP and port) is already defined."""


class RuleNotFound(VBoxError):
    """``natpf1 delete`` of a rule that is not there (E_INVALIDARG from RemoveRedirect)."""


class AccessDenied(VBoxError):
    """E_ACCESSDENIED: host-only range policy (VirtualBox >= 6.1.28) or a racing showvminfo."""


class HostOnlyAdapterError(VBoxError):
    """``Failed to create the host-only adapter``: the host network driver is missing."""


class VTxUnavailable(VBoxError):
    """Hardware virtualization is off or taken by Hyper-V."""


class SettingsFileExists(VBoxError):
    """createvm found a leftover ``.vbox`` from an earlier, unregistered VM."""


class VBoxSyntaxError(VBoxError):
    """Exit 2 (RTEXITCODE_SYNTAX): this VirtualBox does not know an option b2dkit used."""


class VBoxTimeout(VBoxError):
    """VBoxManage did not answer in time (VBoxSVC hung)."""


class NatRedirectFailed(VBoxError, PortInUse):
    """libslirp (7.1+) fails the power-up when a forwarded host port cannot be bound."""


class VMStuck(VBoxError):
    """``gurumeditation``: the VM crashed and stays so until it is powered off."""


class VMInaccessible(VBoxError):
    """The VM's ``.vbox`` file is gone or unreadable: VirtualBox lists it as ``<inaccessible>``."""


@dataclass(frozen=True)
class KnownError:
    pattern: "re.Pattern"
    cls: type
    advice: str
    transient: bool = False
    transient_for: Tuple[str, ...] = ()  # transient only for these subcommands


_LOCK_ADVICE = (
    "the VM is running or another VirtualBox program (GUI, a second VBoxManage) holds it; "
    "stop the VM or close the other program and retry"
)

CATALOGUE: Tuple[KnownError, ...] = (
    # Each entry also matches the untranslated parts (error code, the ``Context:`` call):
    # VirtualBox >= 7.0 translates its messages, and the service (VBoxSVC) keeps the language
    # it started with even when b2dkit runs VBoxManage in English (see ``_env``).
    KnownError(
        re.compile(
            r"Could not find a registered machine named '(?P<vm>[^']*)'"
            r"|VBOX_E_OBJECT_NOT_FOUND \(0x80bb0001\).*FindMachine\(",
            re.S,
        ),
        VMNotRegistered,
        "check the name with `VBoxManage list vms`, or create it with `b2dkit vm.create`",
    ),
    KnownError(
        re.compile(r"VERR_NAT_REDIR_SETUP"),
        NatRedirectFailed,
        "another program holds that host port: free it or forward another port, then start the VM again",
    ),
    KnownError(
        re.compile(
            r"is already locked (?:for|by) a session|already has a lock request pending|while it is locked"
            r"|VBOX_E_INVALID_OBJECT_STATE \(0x80bb0007\).*(?:LockMachine|LaunchVMProcess)\(",
            re.S,
        ),
        VBoxLocked,
        _LOCK_ADVICE,
        transient=True,
    ),
    KnownError(re.compile(r"The object is not ready"), ObjectNotReady, "VirtualBox was busy; retry", True),
    KnownError(
        re.compile(
            r"A NAT rule (?:of this name|for this host port and this host IP) already exists"
            r"|E_INVALIDARG \(0x80070057\).*AddRedirect\(",
            re.S,
        ),
        RuleExists,
        "remove the existing rule first (`b2dkit vm.unforward`)",
    ),
    KnownError(
        re.compile(r"RemoveRedirect", re.S),
        RuleNotFound,
        "list the rules with `b2dkit vm.forwards`",
    ),
    KnownError(
        re.compile(r"Failed to create the host-only adapter"),
        HostOnlyAdapterError,
        "the VirtualBox network driver is not loaded (reinstall VirtualBox or load vboxnetadp); "
        "b2dkit itself only needs NAT",
    ),
    KnownError(
        re.compile(r"VT-x is (?:not available|disabled)|VERR_VMX_NO_VMX|VERR_SVM_NO_SVM|AMD-V is disabled"),
        VTxUnavailable,
        "enable VT-x/AMD-V in the BIOS/UEFI settings and turn off Hyper-V on Windows",
    ),
    KnownError(
        re.compile(r"E_ACCESSDENIED"),
        AccessDenied,
        "VirtualBox refused access: on VirtualBox >= 6.1.28 host-only IPs must be in 192.168.56.0/21 "
        "(see /etc/vbox/networks.conf); otherwise check file permissions",
        transient_for=("showvminfo",),
    ),
    KnownError(
        re.compile(r"Machine settings file .*already exists"),
        SettingsFileExists,
        "a folder from an earlier VM is in the way: re-run `b2dkit vm.create` (it re-registers it) "
        "or delete that folder",
    ),
)

_ERROR_LINE = re.compile(r"^VBoxManage(?:\.exe)?: error: ?(.*)$", re.M)


def classify(argv: Sequence[str], returncode: int, stderr: str) -> VBoxError:
    """Turn a failed run into the most specific error class, with a one-line message."""
    subcommand = argv[1] if len(argv) > 1 else ""
    messages = [m.strip() for m in _ERROR_LINE.findall(stderr)]
    summary = next(
        (m for m in messages if m and not m.startswith(("Details:", "Context:"))),
        None,
    )
    if summary is None:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        summary = lines[-1] if lines else f"exit status {returncode}"
    message = f"VBoxManage {subcommand} failed: {summary}"
    if returncode == 2:
        return VBoxSyntaxError(
            message,
            "this VirtualBox rejected b2dkit's command line; check `VBoxManage --version` (need 5.0+)",
            argv,
            returncode,
            stderr,
        )
    for known in CATALOGUE:
        if known.pattern.search(stderr):
            if known.cls is NatRedirectFailed:
                message = _nat_redirect_message(stderr) or message
            return known.cls(message, known.advice, argv, returncode, stderr)
    return VBoxError(message, None, argv, returncode, stderr)


_REDIR = re.compile(r"redirection of (?P<host>\d+) to (?P<guest>\d+)")


def _nat_redirect_message(stderr: str) -> Optional[str]:
    m = _REDIR.search(stderr)
    if not m:
        return None
    return (
        f"host port {m.group('host')} is already in use: VirtualBox could not forward it to guest port "
        f"{m.group('guest')}, so the VM did not start"
    )


def is_transient(error: VBoxError) -> bool:
    subcommand = error.argv[1] if len(error.argv) > 1 else ""
    for known in CATALOGUE:
        if isinstance(error, known.cls):
            return known.transient or subcommand in known.transient_for
    return False


def failed(returncode: int, stderr: str) -> bool:
    """VBoxManage may exit 0 after a fatal error, so stderr is checked too (DM, Vagrant)."""
    return returncode != 0 or bool(_ERROR_LINE.search(stderr))


# --------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------


class VBoxManage:
    """Runs VBoxManage with argument lists, classifies failures, retries transient ones.

    ``calls`` counts every process started, so tests and benchmarks can hold call budgets.
    ``sleep`` is injectable so retry tests do not wait.
    """

    def __init__(
        self,
        path: Optional[str] = None,
        tries: int = 5,
        delay: float = 0.1,
        max_delay: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        timeout: Optional[float] = 300.0,
    ) -> None:
        self._path = path
        self.tries = tries
        self.delay = delay
        self.max_delay = max_delay
        self.sleep = sleep
        self.timeout = timeout
        self.calls = 0

    @property
    def path(self) -> str:
        if self._path is None:
            self._path = find_vboxmanage()
        return self._path

    def _env(self) -> Dict[str, str]:
        env = dict(os.environ)
        # VirtualBox >= 7.0 translates what VBoxManage prints, and b2dkit matches English text
        # (Vagrant sets LANG=C.UTF-8 for the same reason). LC_ALL too: it overrides LANG.
        # On macOS, where C.UTF-8 may not exist, the C library falls back to "C": English too.
        env["LC_ALL"] = env["LANG"] = "C.UTF-8"
        env.pop("LANGUAGE", None)
        if sys.platform == "darwin":
            # Homebrew and IDE launchers set these; they make VBoxManage load the wrong libraries.
            env.pop("DYLD_LIBRARY_PATH", None)
            env.pop("LD_LIBRARY_PATH", None)
        return env

    def run(
        self,
        args: Sequence[str],
        stdin_writer: Optional[StdinWriter] = None,
        retry: bool = True,
        timeout: Optional[float] = None,
    ) -> str:
        """Run ``VBoxManage *args`` and return stdout (``\\r`` stripped), or raise a VBoxError.

        ``stdin_writer(fileobj)`` streams input (convertfromraw); it is called again on a retry.
        """
        args = [str(a) for a in args]
        argv = [self.path, *args]
        tries = self.tries if retry else 1
        delay = self.delay
        for attempt in range(1, tries + 1):
            returncode, out, err = self._once(argv, stdin_writer, timeout or self.timeout)
            if not failed(returncode, err) or (args[:1] == ["startvm"] and _STARTED.search(out)):
                # startvm may exit 1 although it started the VM (Vagrant's version_5_0.rb
                # ``start`` accepts this line); retrying would only meet the VM's lock.
                return out
            error = classify(argv, returncode, err)
            if attempt == tries or not is_transient(error):
                raise error
            self.sleep(delay)
            delay = min(delay * 2, self.max_delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(
        self, argv: List[str], stdin_writer: Optional[StdinWriter], timeout: Optional[float]
    ) -> Tuple[int, str, str]:
        self.calls += 1
        try:
            if stdin_writer is None:
                proc = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    env=self._env(),
                    timeout=timeout,
                )
                return proc.returncode, _text(proc.stdout), _text(proc.stderr)
            return self._streamed(argv, stdin_writer, timeout)
        except FileNotFoundError:
            raise ToolMissing(f"VBoxManage not found at {argv[0]}: {_INSTALL_HINT}") from None
        except subprocess.TimeoutExpired:
            raise VBoxTimeout(
                f"VBoxManage {argv[1] if len(argv) > 1 else ''} did not finish in {timeout:.0f} s",
                "VirtualBox's service (VBoxSVC) may be hung: quit VirtualBox or reboot, then retry",
                argv,
            ) from None

    def _streamed(self, argv: List[str], stdin_writer: StdinWriter, timeout: Optional[float]) -> Tuple[int, str, str]:
        # stdout/stderr go to temp files, not pipes: a child that prints while we are still
        # writing gigabytes to its stdin must never block on a full pipe (deadlock).
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=err, env=self._env())
            assert proc.stdin is not None  # stdin=PIPE
            try:
                try:
                    stdin_writer(proc.stdin)
                    proc.stdin.close()
                except BrokenPipeError:
                    pass  # the child quit early; its stderr says why
                proc.wait(timeout=timeout)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            finally:
                if proc.stdin and not proc.stdin.closed:
                    try:
                        proc.stdin.close()
                    except BrokenPipeError:
                        pass
            out.seek(0)
            err.seek(0)
            return proc.returncode, _text(out.read()), _text(err.read())

    # -- parsed commands -------------------------------------------------------------------
    def version(self) -> Tuple[int, int, int]:
        return parse_version(self.run(["--version"]))

    def showvminfo(self, vm: str, settings_file: Optional[StrPath] = None) -> "VMInfo":
        """The VM as VirtualBox has it now; VMNotRegistered if it does not exist.

        VirtualBox 7.0.0 prints no ``Forwarding(N)`` lines once a NIC has more than one rule,
        so a NAT NIC that shows none has its rules read from the ``.vbox`` file at ``CfgFile``
        (what Vagrant's version_7_0.rb does). No extra VBoxManage call: a file read.
        ``settings_file`` is where the caller expects that file: used when ``CfgFile`` as
        printed names no file (a code set b2dkit cannot know mangled a non-ASCII folder).
        """
        info = VMInfo.from_text(self.run(["showvminfo", vm, "--machinereadable"]))
        if settings_file and info.cfg_file and not os.path.exists(info.cfg_file):
            if os.path.exists(settings_file):
                info.cfg_file = str(settings_file)
                if info.log_folder and not os.path.isdir(info.log_folder):
                    info.log_folder = None  # then Logs/ beside the settings file
        quiet = [n for n, kind in info.nics.items() if kind == "nat" and not info.forwards.get(n)]
        if quiet and info.cfg_file:
            from_file = forwards_from_settings(info.cfg_file)
            for nic in quiet:
                if from_file.get(nic):
                    info.forwards[nic] = from_file[nic]
        return info

    def list_vms(self, running: bool = False) -> List[Tuple[str, str]]:
        return parse_list_vms(self.run(["list", "runningvms" if running else "vms"]))

    def createvm(self, name: str, basefolder: Optional[StrPath] = None, ostype: str = "Linux26_64") -> Tuple[str, str]:
        """Create and register; returns (uuid, settings file path)."""
        argv = ["createvm", "--name", name, "--ostype", ostype, "--register"]
        if basefolder is not None:
            argv += ["--basefolder", str(basefolder)]
        return parse_createvm(self.run(argv))

    def medium_uuid(self, path: StrPath, kind: str = "disk") -> Optional[str]:
        """The UUID VirtualBox gives the image at ``path`` (``kind`` disk | dvd); None when it
        cannot open it. Unlike a path read back from showvminfo, it survives any code set."""
        try:
            out = self.run(["showmediuminfo", kind, str(path)], retry=False)
        except VBoxError:
            return None
        m = _MEDIUM_UUID.search(out)
        return m.group(1).lower() if m else None

    def registervm(self, settings_file: StrPath) -> None:
        self.run(["registervm", str(settings_file)])

    def convertfromraw_stdin(self, out_path: StrPath, total: int, writer: StdinWriter) -> None:
        """Stream exactly ``total`` bytes from ``writer(fileobj)`` into a new VMDK."""
        self.run(
            ["convertfromraw", "stdin", str(out_path), str(total), "--format", "VMDK"],
            stdin_writer=writer,
            retry=False,
            timeout=None,
        )


_MEDIUM_UUID = re.compile(r"^UUID:\s+([0-9a-fA-F-]{36})\s*$", re.M)
_STARTED = re.compile(r'^VM ".+?" has been successfully started', re.M)


def _text(data: bytes) -> str:
    """VBoxManage's bytes as text: UTF-8 (forced by ``_env``), else the process code set.

    IPRT converts the standard streams to the current code set, which on Windows is the ANSI
    code page, so a non-ASCII home folder may arrive as cp1252 bytes. Never crash on odd bytes.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode(locale.getpreferredencoding(False) or "latin-1", errors="replace")
    return text.replace("\r", "")


# --------------------------------------------------------------------------------------------
# Argument builders (pure)
# --------------------------------------------------------------------------------------------

_BAD_RULE_CHARS = re.compile(r'[,"\\\n]')


def natpf_rule(fwd: Forward) -> str:
    """``name,proto,hostip,hostport,guestip,guestport`` (empty IP = any)."""
    if not fwd.name or _BAD_RULE_CHARS.search(fwd.name):
        # showvminfo does not escape commas or quotes ("probably isn't good enough wrt escaping").
        raise InputError(f"invalid forward name {fwd.name!r}: no commas, quotes or backslashes")
    return f"{fwd.name},{fwd.proto},{fwd.host_ip},{fwd.host_port},{fwd.guest_ip},{fwd.guest_port}"


def natpf_add_argv(vm: str, fwd: Forward, running: bool, nic: int = 1) -> List[str]:
    """``controlvm`` changes a running VM live; ``modifyvm`` needs it powered off."""
    if running:
        return ["controlvm", vm, f"natpf{nic}", natpf_rule(fwd)]
    return ["modifyvm", vm, f"--natpf{nic}", natpf_rule(fwd)]


def natpf_delete_argv(vm: str, name: str, running: bool, nic: int = 1) -> List[str]:
    if running:
        return ["controlvm", vm, f"natpf{nic}", "delete", name]
    return ["modifyvm", vm, f"--natpf{nic}", "delete", name]


def storageattach_argv(
    vm: str, controller: str, port: int, kind: Optional[str], medium: StrPath, device: int = 0
) -> List[str]:
    """Attach ``medium`` (a path, or ``none`` to detach) at controller/port/device."""
    argv = ["storageattach", vm, "--storagectl", controller, "--port", str(port), "--device", str(device)]
    if kind:
        argv += ["--type", kind]
    return argv + ["--medium", str(medium)]


# --------------------------------------------------------------------------------------------
# Parsers (pure)
# --------------------------------------------------------------------------------------------

_NIC_KEY = re.compile(r"^nic(\d+)$")
_FORWARDING_KEY = re.compile(r"^Forwarding\((\d+)\)$")


def parse_pairs(text: str) -> List[Tuple[str, str]]:
    """``showvminfo --machinereadable`` as ordered (key, value) pairs, duplicates kept.

    Follows the reference §4.2: keys may be quoted with ``\\"`` escapes; quoted values
    unescape ``\\"`` and ``\\\\`` but keep other backslashes (VirtualBox 5.0 did not escape
    paths) and may continue across lines (newlines are not escaped); anything irregular
    (``VideoMode="720,400,0"@0,0 1``, ``<not set>``, bare numbers) is kept as raw text.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    pairs = []
    pos, end = 0, len(text)
    while pos < end:
        nl = text.find("\n", pos)
        line_end = end if nl < 0 else nl
        line = text[pos:line_end]
        key, rest_start = _read_key(line)
        if key is None:  # blank or not key=value: skip it
            pos = line_end + 1
            continue
        value_start = pos + rest_start
        if value_start < end and text[value_start] == '"':
            value, close = _read_quoted(text, value_start + 1, multiline=True)
            if close is not None:
                tail_end = text.find("\n", close + 1)
                tail_end = end if tail_end < 0 else tail_end
                if text[close + 1 : tail_end].strip() == "":
                    assert value is not None  # _read_quoted found the closing quote, so a value
                    pairs.append((key, value))
                    pos = tail_end + 1
                    continue
                if text.find("\n", value_start, close) < 0:
                    pairs.append((key, text[value_start:tail_end]))  # irregular: keep the raw line
                    pos = tail_end + 1
                    continue
        # Unquoted, unterminated, or irregular: the raw rest of this line.
        pairs.append((key, text[value_start:line_end]))
        pos = line_end + 1
    return pairs


def _read_key(line: str) -> Tuple[Optional[str], int]:
    """(key, offset of the value) or (None, 0)."""
    if line.startswith('"'):
        key, close = _read_quoted(line, 1, multiline=False)
        if close is not None and line[close + 1 : close + 2] == "=":
            return key, close + 2
    eq = line.find("=")
    if eq <= 0:
        return None, 0
    return line[:eq], eq + 1


def _read_quoted(text: str, i: int, multiline: bool) -> Tuple[Optional[str], Optional[int]]:
    """Read up to the closing unescaped quote; returns (value, index of quote) or (None, None)."""
    out = []
    end = len(text)
    while i < end:
        c = text[i]
        if c == "\\" and i + 1 < end and text[i + 1] in '"\\':
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i
        if c == "\n" and not multiline:
            return None, None
        out.append(c)
        i += 1
    return None, None


_VBOX_NS = "{http://www.virtualbox.org/}"


def forwards_from_settings(cfg_file: StrPath) -> Dict[int, List[Forward]]:
    """NAT rules by NIC number from a ``.vbox`` settings file; {} when it cannot be read.

    ``Machine/Hardware/Network/Adapter`` (``slot`` counts from 0) ``/NAT/Forwarding`` with
    ``name proto hostip hostport guestip guestport``; ``proto`` 1 is TCP, 0 UDP; empty IPs
    are left out. Snapshots hold their own ``Hardware``: only the machine's own is read.
    """
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(cfg_file).getroot()
    except (OSError, ET.ParseError):
        return {}
    out: Dict[int, List[Forward]] = {}
    for adapter in root.iterfind(f"{_VBOX_NS}Machine/{_VBOX_NS}Hardware/{_VBOX_NS}Network/{_VBOX_NS}Adapter"):
        try:
            nic = int(adapter.get("slot", "")) + 1
            for fwd in adapter.iterfind(f"{_VBOX_NS}NAT/{_VBOX_NS}Forwarding"):
                out.setdefault(nic, []).append(
                    Forward(
                        host_port=int(fwd.get("hostport", "")),
                        guest_port=int(fwd.get("guestport", "")),
                        proto="udp" if fwd.get("proto") == "0" else "tcp",
                        host_ip=fwd.get("hostip", ""),
                        guest_ip=fwd.get("guestip", ""),
                        name=fwd.get("name", ""),
                    )
                )
        except ValueError:
            continue  # a rule we cannot read is left out rather than guessed
    for rules in out.values():
        rules.sort(key=lambda f: f.name)  # the order showvminfo prints them in
    return out


def localhost_reachable_from_settings(cfg_file: StrPath) -> bool:
    """Whether NIC 1's NAT lets the guest reach the host's loopback (7.x), from the ``.vbox``
    file: ``Adapter slot="0"/NAT`` attribute ``localhost-reachable``; absent means off (7.x's
    default). False when the file cannot be read: setting it again is harmless."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(cfg_file).getroot()
    except (OSError, ET.ParseError):
        return False
    for adapter in root.iterfind(f"{_VBOX_NS}Machine/{_VBOX_NS}Hardware/{_VBOX_NS}Network/{_VBOX_NS}Adapter"):
        if adapter.get("slot") == "0":
            nat = adapter.find(f"{_VBOX_NS}NAT")
            return nat is not None and nat.get("localhost-reachable") == "true"
    return False


def parse_forward(value: str) -> Forward:
    """``ssh,tcp,127.0.0.1,2222,,22`` → Forward (the rule name is field 0)."""
    parts = value.split(",")
    if len(parts) != 6:
        raise HypervisorError(f"unexpected NAT rule format from VBoxManage: {value!r}")
    name, proto, host_ip, host_port, guest_ip, guest_port = parts
    return Forward(
        host_port=int(host_port),
        guest_port=int(guest_port),
        proto=proto,
        host_ip=host_ip,
        guest_ip=guest_ip,
        name=name,
    )


VBOX_STATES = {
    "running": VMState.RUNNING,
    "paused": VMState.PAUSED,
    "saved": VMState.SAVED,
    "aborted-saved": VMState.SAVED,
    "poweroff": VMState.STOPPED,
    "aborted": VMState.STOPPED,
    "teleported": VMState.STOPPED,
    "gurumeditation": VMState.CRASHED,  # never clears without a power-off (vv#9)
    "inaccessible": VMState.INACCESSIBLE,  # set by VMInfo.from_text: no VMState line at all
}


def map_state(raw: str) -> VMState:
    """VirtualBox's short state name → b2dkit's; transitional states are BUSY.

    ``state_error`` gives CRASHED and INACCESSIBLE their own advice.
    """
    return VBOX_STATES.get(raw, VMState.BUSY)


def state_error(vm: str, info: "VMInfo") -> VBoxError:
    """Why VM ``vm`` cannot be used in its current VirtualBox state, with what to do about it."""
    if info.vbox_state == "gurumeditation":
        return VMStuck(
            f"VM {vm!r} crashed (VirtualBox guru meditation) and stays so until it is powered off",
            f"power it off with `b2dkit vm.stop --name {vm}`, then start it again; its VBox.log says why",
        )
    if info.vbox_state == "inaccessible":
        return VMInaccessible(
            f"VirtualBox cannot read the settings file of VM {vm!r} ({info.uuid})",
            f"put its .vbox file back and run `VBoxManage registervm <file>`, or remove it with "
            f"`b2dkit vm.destroy --name {vm}`",
        )
    return VBoxError(f"VM {vm!r} is {info.vbox_state}", "wait a moment and run the command again")


_ATTACHMENT_KEY = re.compile(r"^(?P<ctl>.+)-(?P<port>\d+)-(?P<dev>\d+)$")
# per-slot attributes: "SATA-ImageUUID-1-0", and since 7.0 "SATA-tempeject-0-0" and friends
_SLOT_TAGS = ("-ImageUUID", "-tempeject", "-IsEjected", "-dvdpassthrough", "-hot-pluggable",
              "-nonrotational", "-discard")


@dataclass
class VMInfo:
    """The parts of showvminfo b2dkit decides on; ``raw`` keeps everything else."""

    name: str
    uuid: str
    vbox_state: str  # VirtualBox's own name: poweroff, running, saving...
    state: VMState
    memory: Optional[int]
    cpus: Optional[int]
    cfg_file: Optional[str]
    log_folder: Optional[str]
    controllers: List[str] = field(default_factory=list)
    storage: Dict[Tuple[str, int, int], str] = field(default_factory=dict)  # path | none | emptydrive
    nics: Dict[int, str] = field(default_factory=dict)  # nat | hostonly | none ...
    forwards: Dict[int, List[Forward]] = field(default_factory=dict)  # by NIC number
    uart: Dict[int, str] = field(default_factory=dict)
    raw: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_text(cls, text: str) -> "VMInfo":
        return cls.from_pairs(parse_pairs(text))

    @classmethod
    def from_pairs(cls, pairs: Iterable[Tuple[str, str]]) -> "VMInfo":
        raw: Dict[str, str] = {}
        nics: Dict[int, str] = {}
        forwards: Dict[int, List[Forward]] = {}
        uart: Dict[int, str] = {}
        attachments = []
        nic = None
        for key, value in pairs:
            m = _NIC_KEY.match(key)
            if m:
                nic = int(m.group(1))
                nics[nic] = value
            elif _FORWARDING_KEY.match(key):
                # Rules of NIC N follow its nicN= line; a fragment without one is NIC 1's.
                forwards.setdefault(nic or 1, []).append(parse_forward(value))
                key = f"nic{nic or 1}.{key}"
            elif re.match(r"^uart\d+$", key):
                uart[int(key[4:])] = value
            else:
                a = _ATTACHMENT_KEY.match(key)
                if a and not a.group("ctl").endswith(_SLOT_TAGS):
                    attachments.append((a.group("ctl"), int(a.group("port")), int(a.group("dev")), value))
            raw[key] = value
        controllers = [v for k, v in raw.items() if re.match(r"^storagecontrollername\d+$", k)]
        storage = {
            (ctl, port, dev): value
            for ctl, port, dev, value in attachments
            if not controllers or ctl in controllers
        }
        vbox_state = raw.get("VMState", "")
        if raw.get("name") == "<inaccessible>" and not vbox_state:
            vbox_state = "inaccessible"  # the .vbox is gone: VirtualBox prints name and UUID only
        return cls(
            name=raw.get("name", ""),
            uuid=raw.get("UUID", ""),
            vbox_state=vbox_state,
            state=map_state(vbox_state),
            memory=_int(raw.get("memory")),
            cpus=_int(raw.get("cpus")),
            cfg_file=raw.get("CfgFile"),
            log_folder=raw.get("LogFldr"),
            controllers=controllers,
            storage=storage,
            nics=nics,
            forwards=forwards,
            uart=uart,
            raw=raw,
        )

    def medium(self, controller: str, port: int, device: int = 0) -> Optional[str]:
        """Attached path at a slot, or None for none/emptydrive/absent."""
        value = self.storage.get((controller, port, device))
        return None if value in (None, "none", "emptydrive") else value

    def image_uuid(self, controller: str, port: int, device: int = 0) -> Optional[str]:
        """The UUID of the medium at a slot (``SATA-ImageUUID-1-0``), lower case; None if empty."""
        value = self.raw.get(f"{controller}-ImageUUID-{port}-{device}")
        return value.lower() if value else None

    def nat_forwards(self, nic: int = 1) -> List[Forward]:
        return list(self.forwards.get(nic, []))


def _int(value: Optional[str]) -> Optional[int]:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


_LIST_VM = re.compile(r'^"(?P<name>.*)" \{(?P<uuid>[0-9a-fA-F-]+)\}\s*$')


def parse_list_vms(text: str) -> List[Tuple[str, str]]:
    """``list vms`` / ``list runningvms``: ``"name" {uuid}`` per line → [(name, uuid)]."""
    out = []
    for line in text.replace("\r", "").splitlines():
        m = _LIST_VM.match(line)
        if m:
            out.append((m.group("name"), m.group("uuid")))
    return out


_VERSION = re.compile(r"^\s*(\d+)\.(\d+)\.(\d+)")


def parse_version(text: str) -> Tuple[int, int, int]:
    """``5.0.8r103449`` / ``6.1.38_Ubuntur153438`` → (5, 0, 8)."""
    for line in text.splitlines():
        m = _VERSION.match(line)
        if m:
            major, minor, patch = (int(g) for g in m.groups())
            return major, minor, patch
    raise HypervisorError(f"cannot read the VirtualBox version from {text.strip()[:60]!r}")


_CREATED_UUID = re.compile(r"^UUID: (\S+)\s*$", re.M)
_CREATED_FILE = re.compile(r"^Settings file: '(.*)'\s*$", re.M)


def parse_createvm(text: str) -> Tuple[str, str]:
    """createvm stdout → (uuid, settings file)."""
    uuid = _CREATED_UUID.search(text)
    path = _CREATED_FILE.search(text)
    if not uuid or not path:
        raise HypervisorError(f"unexpected createvm output: {text.strip()[:120]!r}")
    return uuid.group(1), path.group(1)


_NAT_FAILED = re.compile(
    r"NAT: Failed to redirect (?P<proto>TCP|UDP) (?P<host_ip>[\d.]*):(?P<host_port>\d+) -> "
    r"(?P<guest_ip>[\d.]*):(?P<guest_port>\d+)(?: \((?P<reason>[^)]*)\))?",
    re.I,
)


# libslirp (7.1+, DrvNATlibslirp.cpp): "... Port forward modify FAIL! Details: fRemove=0,
# fUdp=0, pszHostIp=127.0.0.1, u16HostPort=8080, pszGuestIp=, u16GuestPort=80"
_NAT_MODIFY_FAILED = re.compile(
    r"Port forward modify FAIL!? Details: fRemove=(?P<remove>\d), fUdp=(?P<udp>\d), "
    r"pszHostIp=(?P<host_ip>[^,]*), u16HostPort=(?P<host_port>\d+)"
)


def nat_failures(log_text: str) -> List[Tuple[str, str, int, str]]:
    """Redirects VBox.log says failed, from either NAT engine → [(proto, host_ip, host_port, reason)].

    The old engine logs ``NAT: Failed to redirect`` (with the bind error); libslirp logs
    ``Port forward modify FAIL`` (no reason: that text is the reason given).
    """
    found = [
        (m.group("proto").lower(), m.group("host_ip"), int(m.group("host_port")), m.group("reason") or "")
        for m in _NAT_FAILED.finditer(log_text)
    ]
    found += [
        ("udp" if m.group("udp") == "1" else "tcp", m.group("host_ip"), int(m.group("host_port")),
         "Port forward modify FAIL")
        for m in _NAT_MODIFY_FAILED.finditer(log_text)
        if m.group("remove") == "0"
    ]
    return found
