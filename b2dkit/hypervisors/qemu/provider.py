"""QEMU as a provider: the VM is a folder plus, while it runs, a daemonized process.

QEMU has no registry, so ``machine.json`` in the VM's folder plays the part of VirtualBox's
``.vbox``: what to boot next time.  Whether the VM runs is never written down; it is the
pidfile's process, asked over QMP.  Files in ``paths.vm_dir(name)``:

- ``machine.json``: memory, cpus, ISO, disk size and the forwards for the next boot
- ``disk.img``: sparse raw persistent disk starting with the boot2docker format-me header
- ``qemu.pid``, ``qmp.sock`` (or a short path under /tmp when the folder is too deep for a
  UNIX socket; see ``qemu.socket_path``), ``serial.log`` (+ ``serial.log.1``, the boot before)

``destroy`` removes the definition and runtime files but keeps what belongs to the disk:
``disk.img``, the VM's SSH key pair (baked into the disk's ``userdata.tar``) and its
``known_hosts``.  ``destroy(purge=True)`` deletes those too.
"""

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from ... import atomic, disk, paths, records
from ... import forwards as fw
from ...changes import Change, deferred, texts
from ...errors import DamagedRecord, HypervisorError, InputError, VMNotFound
from ...forwards import Forward
from ...sshkeys import KEY_NAME
from ..base import OFFLINE_KINDS, ApplyReport, MachineSpec, Provider, VMState
from . import qemusystem as qemu

MACHINE = "machine.json"
DISK = "disk.img"
PIDFILE = "qemu.pid"
SOCKET = "qmp.sock"
SERIAL = "serial.log"
KNOWN_HOSTS = "known_hosts"
FORMAT = 1

class QemuProvider(Provider):
    name = "qemu"
    destroy_timeout = 10.0  # destroy shuts the guest down cleanly first: the kept disk must be consistent

    def __init__(self, vm: str, qemu_binary: Optional[str] = None):
        super().__init__(vm)
        self._qemu = qemu_binary

    # -- files ------------------------------------------------------------------------------
    @property
    def machine_file(self) -> Path:
        return self.dir / MACHINE

    @property
    def pidfile(self) -> Path:
        return self.dir / PIDFILE

    @property
    def qmp_socket(self) -> Path:
        return qemu.socket_path(self.dir / SOCKET)

    _FIELDS = {"format": int, "name": str, "memory_mb": int, "cpus": int, "disk_mb": int, "iso": str,
               "forwards": list}

    def _load(self) -> Optional[dict]:
        """The VM definition, checked (``records.read``); None when there is none."""
        repair = (f"rebuild it from the profile with `b2dkit vm.create --name={self.vm} --profile=PROFILE` "
                  "(the disk is kept)")
        data = records.read(self.machine_file, self._FIELDS, repair)
        if data is None:
            return None
        if data["format"] != FORMAT or data["name"] != self.vm:
            raise records.damaged(self.machine_file, f"format {data['format']} of VM {data['name']!r}, "
                                  f"not format {FORMAT} of {self.vm!r}", repair)
        try:
            data["forwards"] = fw.check_rules([Forward(**f) for f in data["forwards"]])
        except (TypeError, InputError) as exc:
            why = exc.message if isinstance(exc, InputError) else "a forward is not {host_port, guest_port, ...}"
            raise records.damaged(self.machine_file, why, repair) from None
        return data

    def _require(self) -> dict:
        data = self._load()
        if data is None:
            raise VMNotFound(f"no QEMU VM named {self.vm!r}", hint="create it with `b2dkit vm.create`")
        return data

    def _save(self, data: dict) -> None:
        out = dict(data, forwards=[f.to_dict() for f in data["forwards"]])
        atomic.write_bytes(self.machine_file, (json.dumps(out, indent=2, sort_keys=True) + "\n").encode())

    def _binary(self) -> str:
        if not self._qemu:
            self._qemu = qemu.find_qemu()
        return self._qemu

    # -- state ------------------------------------------------------------------------------
    def _pid(self) -> Optional[int]:
        """The live QEMU process of this VM, or None (cleaning up what a dead one left)."""
        pid = qemu.read_pid(self.pidfile)
        if pid and qemu.process_alive(pid, str(self.pidfile)):
            return pid
        orphan = running_qemus().get(self.vm)  # pid file gone, QEMU not: found by its own -pidfile marker
        if orphan:
            return orphan[0]
        self._clean_runtime()
        return None

    def _clean_runtime(self) -> None:
        for path in (self.pidfile, self.qmp_socket):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _qmp(self, timeout: float = 5.0) -> qemu.QMP:
        return qemu.QMP(self.qmp_socket, timeout=timeout)

    def _status(self) -> Optional[str]:
        """QEMU's run state, or None while its monitor does not answer."""
        try:
            with self._qmp(timeout=2.0) as mon:
                return mon.status()
        except HypervisorError:
            return None

    def halted(self) -> Optional[str]:
        return qemu.halted_reason(self._status()) if self._pid() is not None else None

    def state(self) -> VMState:
        if not self.machine_file.exists() and self.vm not in running_qemus():
            return VMState.ABSENT
        if self._pid() is None:
            self._load()  # a damaged definition says so here, not "stopped" until the next start
            return VMState.STOPPED
        status = self._status()
        if status is None:
            return VMState.BUSY
        return qemu.map_state(status)

    # -- lifecycle --------------------------------------------------------------------------
    def changes(self, spec: MachineSpec, defer: bool = False) -> List[Change]:
        """What ``create(spec, defer)`` would change, in the words its report uses; reads, never writes."""
        old, _wanted, changes = self._decide(spec, defer)
        return [] if old is None else changes

    def create(self, spec: MachineSpec, defer: bool = False) -> ApplyReport:
        """Decide (``_decide``: every input error before anything is written), then act.

        On a running VM (``defer``) forwards change live and memory, CPUs and ISO go into
        machine.json, the definition of the next boot: they take effect at the next start."""
        old, wanted, changes = self._decide(spec, defer)
        running = old is not None and self._pid() is not None
        report = ApplyReport(created=old is None, changes=[] if old is None else texts(changes), running=running)
        paths.ensure_dir(self.dir)
        disk_file = self.dir / DISK
        if not disk_file.exists():
            disk.create_raw(disk_file, disk.header_tar(spec.public_key), disk.size_bytes(spec.disk_mb))
        if running and any(c.kind == "forward" for c in changes):
            self._forwards_live(wanted["forwards"])
        if report.created or report.changes:
            self._save(wanted)
        return report

    def _forwards_live(self, wanted: List[Forward]) -> None:
        """Make the running QEMU's rules ``wanted`` (QMP): gone ones removed, new ones checked and added."""
        live = self.forwards()
        with self._qmp() as mon:
            for fwd in live:
                if fwd not in wanted:
                    mon.hostfwd_remove(fwd)
            for fwd in wanted:
                if fwd not in live:
                    self._require_free(fwd)
                    mon.hostfwd_add(fwd)

    def _decide(self, spec: MachineSpec, defer: bool = False) -> Tuple[Optional[dict], dict, List[Change]]:
        """(old definition, wanted definition, changes): machine.json against ``spec``."""
        rules = spec.check(self.vm)
        disk.header_tar(spec.public_key)
        disk.size_bytes(spec.disk_mb)
        iso = Path(spec.iso).expanduser().resolve()
        try:
            old = self._load()
        except DamagedRecord:  # b2dkit can rebuild its own definition from the spec (the disk stays)
            if self._pid() is not None:
                raise
            old = None
        wanted = {
            "format": FORMAT,
            "name": self.vm,
            "memory_mb": spec.memory_mb,
            "cpus": spec.cpus,
            "disk_mb": spec.disk_mb,
            "iso": str(iso),
            "forwards": fw.with_ssh(rules, [] if old is None else old["forwards"]),
        }
        changes = [] if old is None else _diff(old, wanted)
        if changes:
            state = self.state()
            if state == VMState.RUNNING and defer:
                changes = [deferred(c, self.vm) if c.kind in OFFLINE_KINDS else c for c in changes]
            elif state != VMState.STOPPED:
                raise HypervisorError(f"VM {self.vm!r} is {state}; stop it first to change "
                                      + "; ".join(texts(changes)))
        disk_file = self.dir / DISK
        if not disk_file.exists():
            changes.append(Change(f"new persistent disk {disk_file}", "disk"))
        else:
            # A kept disk keeps its size (we never rewrite a persistent disk): record what it is.
            wanted["disk_mb"] = disk_file.stat().st_size >> 20
            if old is not None and old.get("disk_mb") != wanted["disk_mb"]:
                changes.append(Change(f"disk size recorded as {wanted['disk_mb']} MB", "disk"))
        return old, wanted, changes

    def pending(self) -> List[str]:
        """machine.json's settings the running QEMU does not have yet (they take effect at its next start)."""
        pid = self._pid()
        data = self._load() if pid is not None else None
        if pid is None or data is None:
            return []
        argv = _argv(pid)
        lines = []
        for key, option in (("memory_mb", "-m"), ("cpus", "-smp")):
            now = _option(argv, option)
            if now is not None and now != str(data[key]):
                lines.append(_RECORDED[key].format(vm=self.vm, now=now, next=data[key]))
        return lines

    def start(self) -> None:
        data = self._require()
        state = self.state()
        if state == VMState.RUNNING:
            return
        if state == VMState.PAUSED:
            with self._qmp() as mon:
                mon.execute("cont")
            return
        if state == VMState.BUSY:
            raise HypervisorError(
                f"QEMU (pid {self._pid()}) of VM {self.vm!r} runs but its monitor does not answer",
                hint=f"stop it with `b2dkit vm.stop --name={self.vm}`, then start again",
            )
        iso, disk_file = Path(data["iso"]), self.dir / DISK
        if not iso.is_file():
            raise InputError(f"boot ISO {iso} of VM {self.vm!r} is gone; run `b2dkit vm.create` again")
        if not disk_file.is_file():
            raise HypervisorError(
                f"persistent disk {disk_file} is gone; run `b2dkit vm.create` again to make a new one"
            )
        for fwd in data["forwards"]:
            self._require_free(fwd)
        serial = self.dir / SERIAL
        if serial.exists():
            os.replace(serial, self.dir / (SERIAL + ".1"))  # keep the previous boot for post-mortems
        self._clean_runtime()
        argv = qemu.build_argv(
            self._binary(),
            self.vm,
            accel=qemu.choose_accel(self._qemu),
            memory_mb=data["memory_mb"],
            cpus=data["cpus"],
            iso=iso,
            disk=disk_file,
            pidfile=self.pidfile,
            serial_log=serial,
            qmp_socket=self.qmp_socket,
            forwards=data["forwards"],
        )
        qemu.launch(argv, log_path=serial)
        self._wait_monitor(timeout=15.0)

    def _wait_monitor(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._pid() is None:
                raise HypervisorError(f"QEMU exited right after starting; see {self.dir / SERIAL}")
            if self._status() is not None:
                return
            if time.monotonic() > deadline:
                raise HypervisorError(
                    f"QEMU's monitor did not answer within {timeout:.0f} s; see {self.dir / SERIAL}"
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> bool:
        pid = self._pid()  # also an orphan whose VM folder is gone: it is still this VM's QEMU
        if pid is None:
            if not self.machine_file.exists():
                raise VMNotFound(f"no QEMU VM named {self.vm!r}", hint="create it with `b2dkit vm.create`")
            return True  # nothing runs: stopped, even if the definition is damaged (destroy must work)
        marker = str(self.pidfile)
        asked = False
        with contextlib.suppress(HypervisorError):
            with self._qmp() as mon:
                if mon.status() != "running":
                    mon.execute("cont")  # a paused guest cannot see the power button
                mon.execute("system_powerdown")
                asked = True
        # Without the monitor the guest never saw the button: waiting would only delay the power-off.
        clean = asked and qemu.wait_exit(pid, timeout, marker)
        if not clean:
            try:
                with self._qmp() as mon:
                    mon.execute("quit")
            except (HypervisorError, OSError):
                qemu.kill(pid, signal.SIGTERM)  # QEMU treats SIGTERM as quit
            if not qemu.wait_exit(pid, 5.0, marker):
                qemu.kill(pid, signal.SIGKILL)
                if not qemu.wait_exit(pid, 5.0, marker):
                    raise HypervisorError(
                        f"QEMU (pid {pid}) of VM {self.vm!r} would not exit, even on SIGKILL"
                    )
        self._clean_runtime()
        return clean

    def destroy(self, purge: bool = False) -> None:
        exists = self.machine_file.exists()
        kept = [self.dir / DISK, self.dir / KEY_NAME, self.dir / (KEY_NAME + ".pub"), self.dir / KNOWN_HOSTS]
        if not exists and not (purge and any(p.exists() for p in kept)):
            raise VMNotFound(f"no QEMU VM named {self.vm!r}")
        if exists:
            self.stop(timeout=self.destroy_timeout)
        doomed = [
            self.machine_file,
            self.pidfile,
            self.qmp_socket,
            self.dir / SERIAL,
            self.dir / (SERIAL + ".1"),
        ]
        if purge:
            doomed += kept
        for path in doomed:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with contextlib.suppress(OSError):
            self.dir.rmdir()  # only if nothing else (e.g. the machines record) lives there

    # -- forwards ---------------------------------------------------------------------------
    def forwards(self) -> List[Forward]:
        data = self._require()
        if self._pid() is None:
            return list(data["forwards"])
        with self._qmp() as mon:
            live = mon.host_forwards()
        return [_named(fwd, data["forwards"]) for fwd in live]

    def add_forward(self, fwd: Forward) -> None:
        (fwd,) = fw.check_rules([fwd])
        data = self._require()
        running = self._pid() is not None
        current = self.forwards() if running else data["forwards"]
        if fwd in current:
            return
        held = fw.holder(fwd, current)
        if held:
            fw.refuse_clash(fwd, held, self.vm)
        if running:
            with self._qmp() as mon:
                self._require_free(fwd)
                mon.hostfwd_add(fwd)
        data["forwards"] = [f for f in data["forwards"] if f.name != fwd.name] + [fwd]
        self._save(data)

    def remove_forward(self, name: str) -> None:
        data = self._require()
        live = self.forwards() if self._pid() is not None else []
        persisted = [f for f in data["forwards"] if f.name == name]
        matches = [f for f in live if f.name == name]
        if not (matches or persisted):
            known = sorted({f.name for f in live + data["forwards"]})
            raise InputError(
                f"VM {self.vm!r} has no forward named {name!r} (it has: {', '.join(known) or 'none'})"
            )
        if matches:
            with self._qmp() as mon:
                for fwd in matches:
                    mon.hostfwd_remove(fwd)
        if persisted:
            data["forwards"] = [f for f in data["forwards"] if f.name != name]
            self._save(data)

    def _require_free(self, fwd: Forward) -> None:
        fw.require_free(fwd, neighbours=self._neighbours)

    def _neighbours(self) -> Iterator[Tuple[str, List[Forward]]]:
        """(label, rules) of every other b2dkit QEMU whose process runs, orphans included."""
        for name, (pid, argv_rules) in sorted(running_qemus().items()):
            if name == self.vm:
                continue
            rules = argv_rules
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                machine = paths.data_dir() / "vms" / name / MACHINE
                rules = rules + [Forward(**f) for f in json.loads(machine.read_text())["forwards"]]
            yield f"QEMU VM {name!r} (pid {pid}; `b2dkit vm.stop --name={name}` stops it)", rules

    # -- where things are -------------------------------------------------------------------
    def ssh_endpoint(self) -> Tuple[str, int]:
        return fw.ssh_endpoint(self.forwards(), self.vm)

    def disk_path(self) -> Optional[Path]:
        path = self.dir / DISK
        return path if path.exists() else None

    def log_path(self) -> Optional[Path]:
        return self.dir / SERIAL

    def info(self) -> dict:
        data = self._load()
        if data is None:
            return {}
        facts = {
            "iso": data["iso"],
            "memory_mb": data["memory_mb"],
            "cpus": data["cpus"],
            "disk": str(self.dir / DISK),
            "serial_log": str(self.dir / SERIAL),
            "pid": None,
        }
        pid = self._pid()
        if pid is not None:
            facts["pid"] = pid
            facts["qmp_socket"] = str(self.qmp_socket)
            with contextlib.suppress(HypervisorError):
                with self._qmp(timeout=2.0) as mon:
                    facts["qemu_status"] = mon.status()
                    facts["halted"] = qemu.halted_reason(facts["qemu_status"])
                    facts["accel"] = "kvm" if mon.kvm_enabled() else _accel_from_argv(pid)
        return facts


def _slot(fwd: Forward) -> Tuple[str, str, int]:
    """What the host can bind once: (protocol, address, port)."""
    return (fwd.proto, fwd.host_ip, fwd.host_port)


def _named(live: Forward, persisted: List[Forward]) -> Forward:
    """QEMU does not keep rule names: give a live rule the name machine.json has for it."""
    for fwd in persisted:
        if _slot(fwd) == _slot(live) and fwd.guest_port == live.guest_port:
            if fwd.guest_ip == live.guest_ip or (fwd.guest_ip == qemu.GUEST_IP and live.guest_ip == ""):
                return fwd
    return live


def _diff(old: dict, new: dict) -> List[Change]:
    """The pure diff of two definitions (machine.json as it is, as the spec wants it)."""
    changes = []
    if old.get("memory_mb") != new["memory_mb"]:
        changes.append(Change(f"memory {old.get('memory_mb')} → {new['memory_mb']} MB", "memory"))
    if old.get("cpus") != new["cpus"]:
        changes.append(Change(f"cpus {old.get('cpus')} → {new['cpus']}", "cpus"))
    if old.get("iso") != new["iso"]:
        changes.append(Change(f"boot ISO {old.get('iso')} → {new['iso']}", "iso"))
    before = {f.name: f for f in old["forwards"]}
    after = {f.name: f for f in new["forwards"]}
    for name in sorted(before.keys() - after.keys()):
        changes.append(Change(f"forward {name}: {fw.describe(before[name])} removed", "forward"))
    for name in sorted(after.keys() - before.keys()):
        changes.append(Change(f"forward {name}: {fw.describe(after[name])} added", "forward"))
    for name in sorted(before.keys() & after.keys()):
        if before[name] != after[name]:
            changes.append(Change(f"forward {name}: {fw.describe(after[name])} (replaced)", "forward"))
    return changes


# What ``pending`` says about a setting machine.json holds for the next boot.
_RECORDED = {
    "memory_mb": "memory {next} MB is recorded; VM {vm} runs with {now} MB until its next start",
    "cpus": "cpus {next} is recorded; VM {vm} runs with {now} until its next start",
}


def _argv(pid: int) -> List[str]:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    return []


def _option(argv: List[str], name: str) -> Optional[str]:
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


def _accel_from_argv(pid: int) -> Optional[str]:
    return _option(_argv(pid), "-accel")


def running_qemus() -> Dict[str, Tuple[int, List[Forward]]]:
    """VM name → (pid, forwards on its command line) of every b2dkit QEMU that runs, found by the
    ``-pidfile`` in its argv: pid file or VM folder may be gone, the process is still named."""
    root = paths.data_dir() / "vms"
    found: Dict[str, Tuple[int, List[Forward]]] = {}
    for pid, pidfile, argv in qemu.processes_by_pidfile(root):
        if pidfile.name == PIDFILE and pidfile.parent.parent == root:
            found[pidfile.parent.name] = (pid, qemu.forwards_in_argv(argv))
    return found
