"""The VirtualBox provider: one boot2docker VM driven through ``vboxmanage`` (its VBoxManage wrapper).

Layout (like docker-machine's store): ``<vm_dir>/`` holds the SSH keys and the persistent
disk ``disk.vmdk``; VirtualBox's own machine folder is ``<vm_dir>/<vm>/`` (``createvm
--basefolder <vm_dir>``) with the ``.vbox`` file and ``Logs/``.  The disk lives *outside*
the machine folder on purpose: ``unregistervm --delete`` empties and removes that folder,
and the disk must survive a destroy unless the user purges it.

Every decision reads ``showvminfo`` first (no cache file), then makes only the calls
that change something, so a re-run is a one-call no-op (budgets in issue #3: create ≤ 10
calls, forward ≤ 2, status 1).
"""

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from ... import disk, forwards as fw, paths
from ...errors import HypervisorError, InputError, PortInUse, VMNotFound
from ...forwards import Forward
from .vboxmanage import (
    VBoxManage,
    VMInfo,
    VMNotRegistered,
    natpf_add_argv,
    natpf_delete_argv,
    natpf_rule,
    nat_failures,
    storageattach_argv,
)
from ..base import ApplyReport, MachineSpec, Provider, Status, VMState

CONTROLLER = "SATA"
ISO_PORT = 0
DISK_PORT = 1
OSTYPE = "Linux26_64"
NIC_TYPE = "82540EM"  # docker-machine's choice; virtio needs guest drivers older ISOs lack
DISK_NAME = "disk.vmdk"

# Settings b2dkit owns on every VM, as (showvminfo key, wanted value, modifyvm option).
_BASE_SETTINGS = (
    ("acpi", "on", "--acpi"),  # acpipowerbutton needs it
    ("ioapic", "on", "--ioapic"),  # needed for more than one CPU
    ("rtcuseutc", "on", "--rtcuseutc"),  # TinyCore reads the RTC as UTC (hwclock -u)
    ("boot1", "dvd", "--boot1"),
    ("boot2", "disk", "--boot2"),
    ("boot3", "none", "--boot3"),
    ("boot4", "none", "--boot4"),
)


class VirtualBoxProvider(Provider):
    """One named VirtualBox VM; ``vbox`` and ``sleep`` are injectable for tests."""

    name = "virtualbox"

    def __init__(
        self,
        vm: str,
        vbox: Optional[VBoxManage] = None,
        sleep: Callable[[float], None] = time.sleep,
        poll_interval: float = 0.5,
    ):
        super().__init__(vm)
        self.vbox = vbox or VBoxManage()
        self.sleep = sleep
        self.poll_interval = poll_interval

    # -- where things are ------------------------------------------------------------------
    @property
    def machine_dir(self) -> Path:
        """VirtualBox's folder for this VM (what ``unregistervm --delete`` removes)."""
        return self.dir / self.vm

    @property
    def disk_file(self) -> Path:
        return self.dir / DISK_NAME

    def disk_path(self) -> Optional[Path]:
        return self.disk_file if self.disk_file.exists() else None

    def log_path(self) -> Optional[Path]:
        log = self.machine_dir / "Logs" / "VBox.log"
        return log if log.exists() else None

    # -- reading ---------------------------------------------------------------------------
    def _info(self) -> Optional[VMInfo]:
        try:
            return self.vbox.showvminfo(self.vm)
        except VMNotRegistered:
            return None

    def _require(self) -> VMInfo:
        info = self._info()
        if info is None:
            raise VMNotFound(
                f"there is no VirtualBox VM named {self.vm!r}",
                hint="create it with `b2dkit vm.create`",
            )
        return info

    def state(self) -> VMState:
        info = self._info()
        return VMState.ABSENT if info is None else info.state

    def forwards(self) -> List[Forward]:
        return self._require().nat_forwards()

    def status(self) -> Status:
        """State, forwards and facts from ONE showvminfo (vm.status's budget is one call)."""
        info = self._info()
        if info is None:
            return Status(state=VMState.ABSENT)
        facts = self._facts(info)
        for key in ("state", "forwards"):
            facts.pop(key)
        return Status(state=info.state, forwards=info.nat_forwards(), info=facts)

    def info(self) -> dict:
        """Everything ``vm.status`` shows, from ONE showvminfo (state and forwards included)."""
        info = self._info()
        if info is None:
            return {"state": str(VMState.ABSENT), "disk": _str(self.disk_path())}
        return self._facts(info)

    def _facts(self, info: VMInfo) -> dict:
        return {
            "state": str(info.state),
            "vbox_state": info.vbox_state,
            "uuid": info.uuid,
            "memory_mb": info.memory,
            "cpus": info.cpus,
            "iso": info.medium(CONTROLLER, ISO_PORT),
            "disk": info.medium(CONTROLLER, DISK_PORT) or _str(self.disk_path()),
            "forwards": [f.to_dict() for f in info.nat_forwards()],
            "cfg_file": info.cfg_file,
            "log": str(self._log_of(info)),
        }

    def ssh_endpoint(self) -> Tuple[str, int]:
        return fw.ssh_endpoint(self._require().nat_forwards(), self.vm)

    # -- create / converge -----------------------------------------------------------------
    def changes(self, spec: MachineSpec) -> List[str]:
        """What ``create(spec)`` would change, in the words its report uses; reads, never writes."""
        decision = self._decide(spec)
        if decision.fresh == "register":
            return [f"re-register the VM left in {self.machine_dir}"]
        return [text for text, _ in decision.storage] if decision.fresh else decision.texts()

    def create(self, spec: MachineSpec) -> ApplyReport:
        """Decide (``_decide``: every input error before the first VBoxManage call), then act."""
        decision = self._decide(spec)
        report = ApplyReport()
        if decision.fresh:
            paths.ensure_dir(self.dir)
        if decision.fresh == "register":
            # An unregistered VM of ours (crash, manual unregister): createvm would fail
            # with "Machine settings file already exists", so take it back instead.
            self.vbox.registervm(self.machine_dir / f"{self.vm}.vbox")
            report.changes.append(f"re-registered the VM left in {self.machine_dir}")
            decision = self._decide(spec)  # converge what the old definition holds
        elif decision.fresh == "create":
            self.vbox.createvm(self.vm, basefolder=self.dir, ostype=OSTYPE)
            report.created = True
        info, rule_args = decision.info, decision.rule_args
        if info is not None and info.state is not VMState.STOPPED and rule_args:
            if info.state is VMState.SAVED:
                self.vbox.run(["modifyvm", self.vm, *rule_args])
            else:
                self._apply_rules_live(info, decision.rules)
        elif decision.settings or rule_args:
            self.vbox.run(["modifyvm", self.vm, *decision.settings, *rule_args])
        report.changes += [] if report.created else decision.setting_changes
        report.changes += decision.rule_changes
        for text, action in decision.storage:
            action(decision.header, decision.total)
            report.changes.append(text)
        return report

    def _decide(self, spec: MachineSpec) -> "_Decision":
        """Compare the VM as showvminfo has it with ``spec``: the calls to make, and their texts."""
        wanted = spec.check(self.vm)
        header, total = disk.header_tar(spec.public_key), disk.size_bytes(spec.disk_mb)
        iso = Path(spec.iso).resolve()
        info = self._info()
        fresh = None
        if info is None:
            fresh = "register" if (self.machine_dir / f"{self.vm}.vbox").exists() else "create"
        if info is not None and info.state is VMState.BUSY:
            raise HypervisorError(
                f"VM {self.vm!r} is {info.vbox_state}", hint="wait a moment and run the command again"
            )
        rules = fw.with_ssh(wanted, [] if info is None else info.nat_forwards())
        settings, setting_changes = self._settings_plan(info, spec)
        rule_args, rule_changes = self._rules_plan(info, rules)
        storage = self._storage_plan(info, iso)
        live = info is not None and info.state in (VMState.RUNNING, VMState.PAUSED, VMState.SAVED)
        offline = setting_changes + [text for text, _ in storage]
        if info is not None and live and offline:
            raise HypervisorError(
                f"VM {self.vm!r} is {info.vbox_state}; these changes need it powered off: "
                f"{'; '.join(offline)}",
                hint="run `b2dkit vm.stop`, then run the command again",
            )
        return _Decision(info, fresh, rules, settings, setting_changes, rule_args, rule_changes, storage,
                         header, total)

    def _settings_plan(self, info: Optional[VMInfo], spec: MachineSpec):
        args, changes = [], []
        mem = None if info is None else info.memory
        if mem != spec.memory_mb:
            args += ["--memory", str(spec.memory_mb)]
            changes.append(f"memory {mem} → {spec.memory_mb} MB")
        cpus = None if info is None else info.cpus
        if cpus != spec.cpus:
            args += ["--cpus", str(spec.cpus)]
            changes.append(f"cpus {cpus} → {spec.cpus}")
        for key, value, option in _BASE_SETTINGS:
            current = None if info is None else info.raw.get(key)
            if current != value:
                args += [option, value]
                changes.append(f"{key} {current} → {value}")
        if info is None or info.nics.get(1) != "nat" or info.raw.get("nictype1") != NIC_TYPE:
            args += ["--nic1", "nat", "--nictype1", NIC_TYPE, "--cableconnected1", "on"]
            changes.append("NIC 1 → NAT")
        return args, changes

    def _rules_plan(self, info: Optional[VMInfo], rules: List[Forward]):
        """modifyvm arguments that make NIC 1's rules include ``rules`` (others are kept)."""
        current = {} if info is None else {f.name: f for f in info.nat_forwards()}
        args, changes = [], []
        for fwd in rules:
            have = current.get(fwd.name)
            if have == fwd:
                continue
            clash = fw.clash(fwd, current.values())
            if clash:
                fw.refuse_clash(fwd, clash, self.vm)
            if have is not None:
                args += ["--natpf1", "delete", fwd.name]
            args += ["--natpf1", natpf_rule(fwd)]
            if info is not None:
                changes.append(f"forward {fwd.name}: {fw.describe(fwd)}" + (" (replaced)" if have else " added"))
        return args, changes

    def _apply_rules_live(self, info: VMInfo, rules: List[Forward]):
        current = {f.name: f for f in info.nat_forwards()}
        for fwd in rules:
            have = current.get(fwd.name)
            if have == fwd:
                continue
            if have is None or not fw.same_socket(fwd, have):
                self._require_free(fwd)
            self._add_live(info, fwd, replace=have is not None)

    def _storage_plan(self, info: Optional[VMInfo], iso: Path):
        """[(change text, action(header, total))] in the order they must run."""
        plan = []
        if info is None or CONTROLLER not in info.controllers:
            plan.append(
                (
                    "SATA controller added",
                    lambda h, t: self.vbox.run(
                        [
                            "storagectl",
                            self.vm,
                            "--name",
                            CONTROLLER,
                            "--add",
                            "sata",
                            "--portcount",
                            "4",
                            "--hostiocache",
                            "on",
                            "--bootable",
                            "on",
                        ]
                    ),
                )
            )
        current_iso = None if info is None else info.medium(CONTROLLER, ISO_PORT)
        if current_iso is None or not paths.same_file(current_iso, iso):
            plan.append(
                (
                    f"boot ISO {current_iso} → {iso}" if current_iso else f"boot ISO {iso} attached",
                    lambda h, t: self.vbox.run(
                        storageattach_argv(self.vm, CONTROLLER, ISO_PORT, "dvddrive", iso)
                    ),
                )
            )
        current_disk = None if info is None else info.medium(CONTROLLER, DISK_PORT)
        if current_disk is not None and not paths.same_file(current_disk, self.disk_file):
            raise HypervisorError(
                f"SATA port {DISK_PORT} of VM {self.vm!r} holds {current_disk}, "
                f"not b2dkit's disk {self.disk_file}",
                hint="detach it in VirtualBox (it is not b2dkit's to touch), then run the command again",
            )
        if current_disk is None:
            if self.disk_file.exists():
                text = f"kept persistent disk {self.disk_file} re-attached"
            else:
                text = f"persistent disk {self.disk_file} created"
            plan.append((text, self._make_and_attach_disk))
        return plan

    def _make_and_attach_disk(self, header: bytes, total: int):
        if not self.disk_file.exists():
            self._make_disk(header, total)
        self.vbox.run(storageattach_argv(self.vm, CONTROLLER, DISK_PORT, "hdd", self.disk_file))

    def _make_disk(self, header: bytes, total: int):
        # convertfromraw refuses an existing output, so the atomic write is by hand: convert
        # into a scratch name (a monolithic VMDK does not embed its file name), then rename.
        partial = self.dir / "disk.partial.vmdk"
        if partial.exists():
            partial.unlink()  # left by an interrupted run; never attached to anything
        try:
            self.vbox.convertfromraw_stdin(partial, total, lambda out: disk.write_stream(out, header, total))
            os.chmod(partial, 0o600)
            os.replace(partial, self.disk_file)
        finally:
            if partial.exists():
                partial.unlink()

    # -- running ---------------------------------------------------------------------------
    def start(self) -> None:
        info = self._require()
        if info.state is VMState.RUNNING:
            return
        if info.state is VMState.BUSY:
            raise HypervisorError(f"VM {self.vm!r} is {info.vbox_state}", hint="wait a moment and try again")
        if info.state is VMState.PAUSED:
            self.vbox.run(["controlvm", self.vm, "resume"])
            return
        # VirtualBox starts the VM even when a host port is taken and only logs it, so check first.
        for fwd in info.nat_forwards():
            self._require_free(fwd)
        self.vbox.run(["startvm", self.vm, "--type", "headless"])
        self._raise_nat_failures(self._log_of(info), 0, info.nat_forwards(), started=True)

    def stop(self, timeout: float = 30.0) -> bool:
        info = self._require()
        if info.state in (VMState.STOPPED, VMState.SAVED):
            return True
        if info.state is VMState.PAUSED:
            self.vbox.run(["controlvm", self.vm, "resume"])  # a paused guest cannot see the button
        if info.state is not VMState.BUSY:
            self.vbox.run(["controlvm", self.vm, "acpipowerbutton"])
        for _ in range(max(1, math.ceil(timeout / self.poll_interval))):
            self.sleep(self.poll_interval)
            if self.state() in (VMState.STOPPED, VMState.ABSENT):
                return True
        self._poweroff()
        return False

    def _poweroff(self):
        try:
            self.vbox.run(["controlvm", self.vm, "poweroff"])
        except HypervisorError:
            if self.state() is not VMState.STOPPED:  # "not currently running" = it just stopped
                raise

    def destroy(self, purge: bool = False) -> None:
        info = self._info()
        if info is not None:
            if info.state in (VMState.RUNNING, VMState.PAUSED, VMState.BUSY):
                self._poweroff()
            # unregistervm --delete deletes every attached hard disk: detach what must survive.
            iso_slot = (CONTROLLER, ISO_PORT, 0)
            for (ctl, port, dev), medium in sorted(info.storage.items()):
                if medium in ("none", "emptydrive") or (ctl, port, dev) == iso_slot:
                    continue
                if purge and paths.same_file(medium, self.disk_file):
                    continue
                self.vbox.run(storageattach_argv(self.vm, ctl, port, None, "none", device=dev))
            self.vbox.run(["unregistervm", self.vm, "--delete"])
        if purge:
            for path in (self.disk_file, self.dir / "disk.partial.vmdk"):
                if path.exists():
                    path.unlink()

    # -- forwards --------------------------------------------------------------------------
    def add_forward(self, fwd: Forward) -> None:
        (fwd,) = fw.check_rules([fwd])
        info = self._require()
        if info.state is VMState.BUSY:
            raise HypervisorError(f"VM {self.vm!r} is {info.vbox_state}", hint="wait a moment and try again")
        current = {f.name: f for f in info.nat_forwards()}
        have = current.get(fwd.name)
        if have == fwd:
            return  # deterministic names: re-adding the same rule is a no-op
        clash = fw.clash(fwd, current.values())
        if clash:
            fw.refuse_clash(fwd, clash, self.vm)
        live = info.state in (VMState.RUNNING, VMState.PAUSED)
        held_by_us = live and have is not None and fw.same_socket(fwd, have)
        if not held_by_us:
            self._require_free(fwd)
        if live:
            self._add_live(info, fwd, replace=have is not None)
        else:
            args = ["--natpf1", "delete", fwd.name] if have is not None else []
            self.vbox.run(["modifyvm", self.vm, *args, "--natpf1", natpf_rule(fwd)])

    def _add_live(self, info: VMInfo, fwd: Forward, replace: bool):
        log = self._log_of(info)
        offset = log.stat().st_size if log.exists() else 0
        if replace:
            self.vbox.run(natpf_delete_argv(self.vm, fwd.name, running=True))
        self.vbox.run(natpf_add_argv(self.vm, fwd, running=True))
        self._raise_nat_failures(log, offset, [fwd], started=False)

    def remove_forward(self, name: str) -> None:
        info = self._require()
        if name not in {f.name for f in info.nat_forwards()}:
            known = ", ".join(f.name for f in info.nat_forwards()) or "none"
            raise InputError(f"VM {self.vm!r} has no forward named {name!r} (it has: {known})")
        running = info.state in (VMState.RUNNING, VMState.PAUSED)
        self.vbox.run(natpf_delete_argv(self.vm, name, running))

    # -- port checks -----------------------------------------------------------------------
    def _require_free(self, fwd: Forward):
        """The shared port policy; the neighbours are asked only once a bind has failed (it costs calls)."""
        fw.require_free(fwd, neighbours=self._neighbours)

    def _neighbours(self):
        """(label, rules) of every other running VirtualBox VM, b2dkit's or not."""
        for name, _uuid in self.vbox.list_vms(running=True):
            if name == self.vm:
                continue
            try:
                other = self.vbox.showvminfo(name)
            except VMNotRegistered:
                continue
            for rules in other.forwards.values():
                yield f"VirtualBox VM {name!r}", rules

    def _log_of(self, info: VMInfo) -> Path:
        if info.log_folder:
            return Path(info.log_folder) / "VBox.log"
        if info.cfg_file:
            return Path(info.cfg_file).parent / "Logs" / "VBox.log"
        return self.machine_dir / "Logs" / "VBox.log"

    def _raise_nat_failures(self, log: Path, offset: int, rules: List[Forward], started: bool):
        try:
            with open(log, "rb") as fh:
                fh.seek(offset)
                text = fh.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return
        failed = []
        for proto, host_ip, host_port, reason in nat_failures(text):
            for fwd in rules:
                if fwd.proto == proto and fwd.host_port == host_port:
                    failed.append(f"{host_ip}:{host_port}/{proto}" + (f" ({reason})" if reason else ""))
        if failed:
            what = "started, but" if started else "is running, but"
            raise PortInUse(
                f"VM {self.vm!r} {what} VirtualBox could not forward host port {', '.join(failed)}",
                hint=f"another program took it; free it, then `b2dkit vm.stop` + `b2dkit vm.start` ({log})",
            )


# -- helpers ---------------------------------------------------------------------------------


@dataclass
class _Decision:
    """What create will do to one VM: VBoxManage arguments and the user-readable line of each."""

    info: Optional[VMInfo]
    fresh: Optional[str]  # "create" | "register" when VirtualBox has no such VM yet
    rules: List[Forward]
    settings: List[str]
    setting_changes: List[str]
    rule_args: List[str]
    rule_changes: List[str]
    storage: list  # [(text, action(header, total))]
    header: bytes  # the persistent disk's format-me header, should a disk be made
    total: int

    def texts(self) -> List[str]:
        return self.setting_changes + self.rule_changes + [text for text, _ in self.storage]


def _str(path) -> Optional[str]:
    return None if path is None else str(path)
