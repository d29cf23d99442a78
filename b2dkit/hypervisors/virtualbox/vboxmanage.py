"""The one place b2dkit runs VBoxManage: finding it, running it, and parsing what it prints.

Everything above this module gets parsed data (``VMInfo``, lists of names) or a typed
error with advice, never raw text.  The rules come from the reference
(``vboxmanage-and-boot2docker.md`` §2.5, §2.6, §4): VBoxManage sometimes exits 0 while
printing ``VBoxManage: error:``, some errors are transient and worth a bounded retry, and
``showvminfo --machinereadable`` is a loosely quoted format with irregular lines.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ... import install
from ...errors import HypervisorError, InputError, ToolMissing, VMNotFound
from ...forwards import Forward
from ..base import VMState

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
    candidates += [
        Path("/Applications/VirtualBox.app/Contents/MacOS/VBoxManage"),
        Path("/usr/local/bin/VBoxManage"),
        Path(r"C:\Program Files\Oracle\VirtualBox\VBoxManage.exe"),
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    raise ToolMissing(f"VBoxManage not found: {_INSTALL_HINT}")


# --------------------------------------------------------------------------------------------
# Errors: a small catalogue of what VBoxManage says and what the user should do about it
# --------------------------------------------------------------------------------------------


class VBoxError(HypervisorError):
    """VBoxManage failed; carries the command, its exit status and stderr for debugging."""

    def __init__(self, message, hint=None, argv=(), returncode=None, stderr=""):
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
    KnownError(
        re.compile(r"Could not find a registered machine named '(?P<vm>[^']*)'"),
        VMNotRegistered,
        "check the name with `VBoxManage list vms`, or create it with `b2dkit vm.create`",
    ),
    KnownError(
        re.compile(
            r"is already locked (?:for|by) a session|already has a lock request pending|while it is locked"
        ),
        VBoxLocked,
        _LOCK_ADVICE,
        transient=True,
    ),
    KnownError(re.compile(r"The object is not ready"), ObjectNotReady, "VirtualBox was busy; retry", True),
    KnownError(
        re.compile(r"A NAT rule (?:of this name|for this host port and this host IP) already exists"),
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
            return known.cls(message, known.advice, argv, returncode, stderr)
    return VBoxError(message, None, argv, returncode, stderr)


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
    ):
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

    def _env(self):
        env = dict(os.environ)
        if sys.platform == "darwin":
            # Homebrew and IDE launchers set these; they make VBoxManage load the wrong libraries.
            env.pop("DYLD_LIBRARY_PATH", None)
            env.pop("LD_LIBRARY_PATH", None)
        return env

    def run(
        self,
        args: Sequence[str],
        stdin_writer: Optional[Callable] = None,
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
            if not failed(returncode, err):
                return out
            error = classify(argv, returncode, err)
            if attempt == tries or not is_transient(error):
                raise error
            self.sleep(delay)
            delay = min(delay * 2, self.max_delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(self, argv, stdin_writer, timeout):
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

    def _streamed(self, argv, stdin_writer, timeout):
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

    def showvminfo(self, vm: str) -> "VMInfo":
        """The VM as VirtualBox has it now; VMNotRegistered if it does not exist."""
        return VMInfo.from_text(self.run(["showvminfo", vm, "--machinereadable"]))

    def list_vms(self, running: bool = False) -> List[Tuple[str, str]]:
        return parse_list_vms(self.run(["list", "runningvms" if running else "vms"]))

    def createvm(self, name: str, basefolder=None, ostype: str = "Linux26_64") -> Tuple[str, str]:
        """Create and register; returns (uuid, settings file path)."""
        argv = ["createvm", "--name", name, "--ostype", ostype, "--register"]
        if basefolder is not None:
            argv += ["--basefolder", str(basefolder)]
        return parse_createvm(self.run(argv))

    def registervm(self, settings_file) -> None:
        self.run(["registervm", str(settings_file)])

    def convertfromraw_stdin(self, out_path, total: int, writer: Callable) -> None:
        """Stream exactly ``total`` bytes from ``writer(fileobj)`` into a new VMDK."""
        self.run(
            ["convertfromraw", "stdin", str(out_path), str(total), "--format", "VMDK"],
            stdin_writer=writer,
            retry=False,
            timeout=None,
        )


def _text(data: bytes) -> str:
    # VirtualBox prints UTF-8 (non-ASCII home folders are common); never crash on odd bytes.
    return data.decode("utf-8", errors="replace").replace("\r", "")


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
    vm: str, controller: str, port: int, kind: Optional[str], medium, device: int = 0
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


def _read_key(line: str):
    """(key, offset of the value) or (None, 0)."""
    if line.startswith('"'):
        key, close = _read_quoted(line, 1, multiline=False)
        if close is not None and line[close + 1 : close + 2] == "=":
            return key, close + 2
    eq = line.find("=")
    if eq <= 0:
        return None, 0
    return line[:eq], eq + 1


def _read_quoted(text: str, i: int, multiline: bool):
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
}


def map_state(raw: str) -> VMState:
    """VirtualBox's short state name → b2dkit's; transitional states are BUSY."""
    return VBOX_STATES.get(raw, VMState.BUSY)


_ATTACHMENT_KEY = re.compile(r"^(?P<ctl>.+)-(?P<port>\d+)-(?P<dev>\d+)$")


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
                if a and not a.group("ctl").endswith("-ImageUUID"):
                    attachments.append((a.group("ctl"), int(a.group("port")), int(a.group("dev")), value))
            raw[key] = value
        controllers = [v for k, v in raw.items() if re.match(r"^storagecontrollername\d+$", k)]
        storage = {
            (ctl, port, dev): value
            for ctl, port, dev, value in attachments
            if not controllers or ctl in controllers
        }
        vbox_state = raw.get("VMState", "")
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

    def nat_forwards(self, nic: int = 1) -> List[Forward]:
        return list(self.forwards.get(nic, []))


def _int(value):
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


def nat_failures(log_text: str) -> List[Tuple[str, str, int, str]]:
    """``NAT: Failed to redirect`` lines of VBox.log → [(proto, host_ip, host_port, reason)]."""
    return [
        (m.group("proto").lower(), m.group("host_ip"), int(m.group("host_port")), m.group("reason") or "")
        for m in _NAT_FAILED.finditer(log_text)
    ]
