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
from typing import Iterator, List, Optional, Tuple

from ... import atomic, disk, paths
from ... import forwards as fw
from ...errors import HypervisorError, InputError, VMNotFound
from ...forwards import Forward
from ...sshkeys import KEY_NAME
from ..base import ApplyReport, MachineSpec, Provider, VMState
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

    def _load(self) -> Optional[dict]:
        try:
            data = json.loads(self.machine_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise HypervisorError(
                f"VM definition {self.machine_file} is unreadable ({exc}); "
                f"fix or delete it and run `b2dkit vm.create` again"
            ) from None
        data["forwards"] = [Forward(**f) for f in data.get("forwards", [])]
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

    def state(self) -> VMState:
        if not self.machine_file.exists():
            return VMState.ABSENT
        if self._pid() is None:
            return VMState.STOPPED
        status = self._status()
        if status is None:
            return VMState.BUSY
        return qemu.map_state(status)

    # -- lifecycle --------------------------------------------------------------------------
    def changes(self, spec: MachineSpec) -> List[str]:
        """What ``create(spec)`` would change, in the words its report uses; reads, never writes."""
        old, _wanted, changes = self._decide(spec)
        return [] if old is None else changes

    def create(self, spec: MachineSpec) -> ApplyReport:
        """Decide (``_decide``: every input error before anything is written), then act."""
        old, wanted, changes = self._decide(spec)
        report = ApplyReport(created=old is None, changes=[] if old is None else changes)
        paths.ensure_dir(self.dir)
        disk_file = self.dir / DISK
        if not disk_file.exists():
            disk.create_raw(disk_file, disk.header_tar(spec.public_key), disk.size_bytes(spec.disk_mb))
        if report.created or report.changes:
            self._save(wanted)
        return report

    def _decide(self, spec: MachineSpec) -> Tuple[Optional[dict], dict, List[str]]:
        """(old definition, wanted definition, change lines): machine.json against ``spec``."""
        rules = spec.check(self.vm)
        disk.header_tar(spec.public_key)
        disk.size_bytes(spec.disk_mb)
        iso = Path(spec.iso).expanduser().resolve()
        old = self._load()
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
        if changes and self.state() != VMState.STOPPED:
            raise HypervisorError(f"VM {self.vm!r} is {self.state()}; stop it first to change " + "; ".join(changes))
        disk_file = self.dir / DISK
        if not disk_file.exists():
            changes.append(f"new persistent disk {disk_file}")
        else:
            # A kept disk keeps its size (we never rewrite a persistent disk): record what it is.
            wanted["disk_mb"] = disk_file.stat().st_size >> 20
            if old is not None and old.get("disk_mb") != wanted["disk_mb"]:
                changes.append(f"disk size recorded as {wanted['disk_mb']} MB")
        return old, wanted, changes

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
            raise HypervisorError(f"VM {self.vm!r} is busy (QEMU's monitor does not answer); try again")
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
        self._require()
        pid = self._pid()
        if pid is None:
            return True
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
        same_name = [f for f in current if f.name == fwd.name]
        clash = fw.clash(fwd, current)
        if clash:
            fw.refuse_clash(fwd, clash, self.vm)
        if running:
            with self._qmp() as mon:
                for old in same_name:
                    mon.hostfwd_remove(old)
                try:
                    self._require_free(fwd)
                    mon.hostfwd_add(fwd)
                except BaseException:
                    for old in same_name:  # put back what we replaced: nothing is lost on error
                        with contextlib.suppress(HypervisorError):
                            mon.hostfwd_add(old)
                    raise
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
        """(label, rules) of every other b2dkit QEMU VM whose process runs."""
        for machine in sorted((paths.data_dir() / "vms").glob(f"*/{MACHINE}")):
            name = machine.parent.name
            pidfile = machine.parent / PIDFILE
            pid = qemu.read_pid(pidfile)
            if name == self.vm or not (pid and qemu.process_alive(pid, str(pidfile))):
                continue
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                yield f"QEMU VM {name!r}", [Forward(**f) for f in json.loads(machine.read_text())["forwards"]]

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


def _diff(old: dict, new: dict) -> List[str]:
    changes = []
    if old.get("memory_mb") != new["memory_mb"]:
        changes.append(f"memory {old.get('memory_mb')} → {new['memory_mb']} MB")
    if old.get("cpus") != new["cpus"]:
        changes.append(f"cpus {old.get('cpus')} → {new['cpus']}")
    if old.get("iso") != new["iso"]:
        changes.append(f"boot ISO {old.get('iso')} → {new['iso']}")
    before = {f.name: f for f in old["forwards"]}
    after = {f.name: f for f in new["forwards"]}
    for name in sorted(before.keys() - after.keys()):
        changes.append(f"forward {name}: {fw.describe(before[name])} removed")
    for name in sorted(after.keys() - before.keys()):
        changes.append(f"forward {name}: {fw.describe(after[name])} added")
    for name in sorted(before.keys() & after.keys()):
        if before[name] != after[name]:
            changes.append(f"forward {name}: {fw.describe(after[name])} (replaced)")
    return changes


def _accel_from_argv(pid: int) -> Optional[str]:
    with contextlib.suppress(OSError):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        if "-accel" in argv:
            return argv[argv.index("-accel") + 1]
    return None
