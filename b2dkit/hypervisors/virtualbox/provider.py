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

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from ... import atomic, disk, forwards as fw, paths
from ...changes import Change, deferred, texts
from ...errors import HypervisorError, InputError, PortInUse, VMNotFound
from ...forwards import Forward
from .vboxmanage import (
    VBoxManage,
    VMInfo,
    VMNotRegistered,
    localhost_reachable_from_settings,
    natpf_add_argv,
    natpf_delete_argv,
    natpf_rule,
    nat_failures,
    state_error,
    storageattach_argv,
)
from ..base import OFFLINE_KINDS, ApplyReport, MachineSpec, Provider, Status, VMState

CONTROLLER = "SATA"
ISO_PORT = 0
DISK_PORT = 1
OSTYPE = "Linux26_64"
NIC_TYPE = "82540EM"  # docker-machine's choice; virtio needs guest drivers older ISOs lack
DISK_NAME = "disk.vmdk"
UUID_NAME = "vbox-uuid"  # the VM's UUID: how it is found once VirtualBox cannot read its name
PENDING_NAME = "pending.json"  # memory/cpus/ISO recorded while the VM ran, made by the next start
# States in which VirtualBox refuses changes; state_error says what to do about each.
_UNUSABLE = (VMState.BUSY, VMState.CRASHED, VMState.INACCESSIBLE)

# A storage change and what makes it: action(format-me header, disk size in bytes).
_Storage = Tuple[Change, Callable[[bytes, int], object]]

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
        """showvminfo by name; else, by the UUID b2dkit remembered, the VM if VirtualBox can no
        longer read its settings file (it then knows no name, only the UUID: #12 item 7)."""
        try:
            return self.vbox.showvminfo(self.vm, settings_file=self.machine_dir / f"{self.vm}.vbox")
        except VMNotRegistered:
            pass
        uuid = self._remembered_uuid()
        if uuid is None:
            return None
        try:
            info = self.vbox.showvminfo(uuid)
        except VMNotRegistered:
            return None
        return info if info.state is VMState.INACCESSIBLE else None

    @property
    def _uuid_file(self) -> Path:
        return self.dir / UUID_NAME

    def _remembered_uuid(self) -> Optional[str]:
        try:
            return self._uuid_file.read_text().strip() or None
        except OSError:
            return None

    def _remember_uuid(self, uuid: Optional[str]) -> None:
        if uuid and uuid != self._remembered_uuid():
            atomic.write_bytes(self._uuid_file, (uuid + "\n").encode(), mode=0o600)

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
    def changes(self, spec: MachineSpec, defer: bool = False) -> List[Change]:
        """What ``create(spec, defer)`` would change, in the words its report uses; reads, never writes."""
        decision = self._decide(spec, defer)
        if decision.fresh == "register":
            return [Change(f"re-register the VM left in {self.machine_dir}", "register")]
        return [change for change, _ in decision.storage] if decision.fresh else decision.changes()

    def create(self, spec: MachineSpec, defer: bool = False) -> ApplyReport:
        """Decide (``_decide``: every input error before the first VBoxManage call), then act."""
        decision = self._decide(spec, defer)
        report = ApplyReport()
        if decision.fresh:
            paths.ensure_dir(self.dir)
        if decision.fresh == "register":
            # An unregistered VM of ours (crash, manual unregister): createvm would fail
            # with "Machine settings file already exists", so take it back instead.
            self.vbox.registervm(self.machine_dir / f"{self.vm}.vbox")
            report.changes.append(f"re-registered the VM left in {self.machine_dir}")
            decision = self._decide(spec, defer)  # converge what the old definition holds
        elif decision.fresh == "create":
            uuid, _ = self.vbox.createvm(self.vm, basefolder=self.dir, ostype=OSTYPE)
            self._remember_uuid(uuid)
            report.created = True
        if decision.info is not None:
            self._remember_uuid(decision.info.uuid)  # also for VMs an older b2dkit made
        info, rule_args = decision.info, decision.rule_args
        if info is not None and info.state is not VMState.STOPPED and rule_args:
            if info.state is VMState.SAVED:
                self.vbox.run(["modifyvm", self.vm, *rule_args])
            else:
                self._apply_rules_live(info, decision.rules)
        elif decision.settings or rule_args:
            self.vbox.run(["modifyvm", self.vm, *decision.settings, *rule_args])
        report.changes += [] if report.created else texts(decision.setting_changes)
        report.changes += texts(decision.rule_changes)
        for change, action in decision.storage:
            action(decision.header, decision.total)
            report.changes.append(change.text)
        if decision.pending != self._pending():
            self._save_pending(decision.pending)
        report.running = info is not None and info.state in (VMState.RUNNING, VMState.PAUSED)
        return report

    def _decide(self, spec: MachineSpec, defer: bool = False) -> "_Decision":
        """Compare the VM as showvminfo has it with ``spec``: the calls to make, and their changes.

        On a running VM with ``defer``, memory, CPUs and ISO are recorded in ``pending.json``
        (``start`` makes them before it boots); anything else that needs it off is refused."""
        wanted = spec.check(self.vm)
        header, total = disk.header_tar(spec.public_key), disk.size_bytes(spec.disk_mb)
        iso = Path(spec.iso).resolve()
        info = self._info()
        fresh = None
        if info is None:
            fresh = "register" if (self.machine_dir / f"{self.vm}.vbox").exists() else "create"
        if info is not None and info.state in _UNUSABLE:
            raise state_error(self.vm, info)
        live = info is not None and info.state in (VMState.RUNNING, VMState.PAUSED, VMState.SAVED)
        recorded = self._pending() if live else {}
        rules = fw.with_ssh(wanted, [] if info is None else info.nat_forwards())
        settings, setting_changes = self._settings_plan(info, spec, recorded)
        rule_args, rule_changes = self._rules_plan(info, rules)
        storage = self._storage_plan(info, iso, recorded)
        offline = setting_changes + [change for change, _ in storage]
        pending = dict(recorded)
        if info is not None and live and offline:
            if not (defer and info.state is not VMState.SAVED and all(c.kind in OFFLINE_KINDS for c in offline)):
                raise HypervisorError(
                    f"VM {self.vm!r} is {info.vbox_state}; these changes need it powered off: "
                    f"{'; '.join(texts(offline))}",
                    hint="run `b2dkit vm.stop`, then run the command again",
                )
            pending.update({"memory_mb": spec.memory_mb, "cpus": spec.cpus, "iso": str(iso)})
            setting_changes = [deferred(c, self.vm) for c in setting_changes]
            storage = [(deferred(c, self.vm), _later) for c, _ in storage]
            settings = []
        return _Decision(info, fresh, rules, settings, setting_changes, rule_args, rule_changes, storage,
                         header, total, pending if live else {})

    # -- settings recorded for the next start (a running VM cannot take them) -----------------
    @property
    def _pending_file(self) -> Path:
        return self.dir / PENDING_NAME

    def _pending(self) -> Dict[str, Any]:
        """{memory_mb, cpus, iso} recorded by ``create(defer=True)`` while the VM ran; {} if none."""
        try:
            data = json.loads(self._pending_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_pending(self, data: Dict[str, Any]) -> None:
        if data:
            atomic.write_bytes(self._pending_file, (json.dumps(data, sort_keys=True) + "\n").encode())
        else:
            self._pending_file.unlink(missing_ok=True)

    def pending(self) -> List[str]:
        """What ``pending.json`` holds that the running VM does not have yet, in words."""
        info = self._info()
        recorded = self._pending()
        if info is None or info.state not in (VMState.RUNNING, VMState.PAUSED) or not recorded:
            return []
        lines = []
        if recorded.get("memory_mb") not in (None, info.memory):
            lines.append(f"memory {recorded['memory_mb']} MB is recorded; VM {self.vm} runs with "
                         f"{info.memory} MB until its next start")
        if recorded.get("cpus") not in (None, info.cpus):
            lines.append(f"cpus {recorded['cpus']} is recorded; VM {self.vm} runs with {info.cpus} "
                         "until its next start")
        current_iso = info.medium(CONTROLLER, ISO_PORT)
        if recorded.get("iso") and not (current_iso and paths.same_file(current_iso, recorded["iso"])):
            lines.append(f"boot ISO {recorded['iso']} is recorded for the next start of VM {self.vm}")
        return lines

    def _apply_pending(self, info: VMInfo) -> None:
        """Before a boot: make what was recorded while the VM ran (one modifyvm, one storageattach)."""
        recorded = self._pending()
        if not recorded:
            return
        args = []
        if recorded.get("memory_mb") not in (None, info.memory):
            args += ["--memory", str(recorded["memory_mb"])]
        if recorded.get("cpus") not in (None, info.cpus):
            args += ["--cpus", str(recorded["cpus"])]
        if args:
            self.vbox.run(["modifyvm", self.vm, *args])
        current_iso = info.medium(CONTROLLER, ISO_PORT)
        iso = recorded.get("iso")
        if iso and Path(iso).is_file() and not (current_iso and paths.same_file(current_iso, iso)):
            self.vbox.run(storageattach_argv(self.vm, CONTROLLER, ISO_PORT, "dvddrive", Path(iso)))
        self._save_pending({})

    def _settings_plan(self, info: Optional[VMInfo], spec: MachineSpec,
                       recorded: Dict[str, Any]) -> Tuple[List[str], List[Change]]:
        """modifyvm arguments and their changes; ``recorded``: what a running VM gets at its next start."""
        args: List[str] = []
        changes: List[Change] = []
        mem = None if info is None else recorded.get("memory_mb", info.memory)
        if mem != spec.memory_mb:
            args += ["--memory", str(spec.memory_mb)]
            changes.append(Change(f"memory {mem} → {spec.memory_mb} MB", "memory"))
        cpus = None if info is None else recorded.get("cpus", info.cpus)
        if cpus != spec.cpus:
            args += ["--cpus", str(spec.cpus)]
            changes.append(Change(f"cpus {cpus} → {spec.cpus}", "cpus"))
        for key, value, option in _BASE_SETTINGS:
            current = None if info is None else info.raw.get(key)
            if current != value:
                args += [option, value]
                changes.append(Change(f"{key} {current} → {value}", "setting"))
        if info is None or info.nics.get(1) != "nat" or info.raw.get("nictype1") != NIC_TYPE:
            args += ["--nic1", "nat", "--nictype1", NIC_TYPE, "--cableconnected1", "on"]
            changes.append(Change("NIC 1 → NAT", "nic"))
        if info is None:
            # The NAT engine's DNS proxy keeps the guest's DNS across host network changes
            # (docker-machine's default). showvminfo does not print it, so it is set at create.
            args += ["--natdnsproxy1", "on"]
        if spec.host_loopback and self._localhost_reachable(info) is False:
            # 7.x NAT no longer lets the guest reach the host's 127.0.0.1 (6.1 always did, and
            # rejects the option): #12 item 9. Only asked for when the profile wants it.
            args += ["--nat-localhostreachable1", "on"]
            if info is not None:
                changes.append(Change("NIC 1 → guest reaches the host's loopback", "nic"))
        return args, changes

    def _localhost_reachable(self, info: Optional[VMInfo]) -> Optional[bool]:
        """NIC 1's ``localhost-reachable`` as the ``.vbox`` file has it (showvminfo does not
        print it); None on VirtualBox 6.1, which has no such setting (one ``--version`` call)."""
        if info is not None and info.cfg_file and localhost_reachable_from_settings(info.cfg_file):
            return True  # a re-run costs no call
        return None if self.vbox.version() < (7, 0, 0) else False

    def _rules_plan(self, info: Optional[VMInfo], rules: List[Forward]) -> Tuple[List[str], List[Change]]:
        """modifyvm arguments that make NIC 1's rules include ``rules`` (others are kept, except a
        container's auto forward on a port ``rules`` want: ``fw.with_ssh`` gave it to them)."""
        current = {} if info is None else {f.name: f for f in info.nat_forwards()}
        args: List[str] = []
        changes: List[Change] = []
        for fwd in rules:
            have = current.get(fwd.name)
            if have == fwd:
                continue
            clash = fw.clash(fwd, current.values())
            if clash and fw.is_auto(clash):
                args += ["--natpf1", "delete", clash.name]
                changes.append(Change(f"forward {clash.name}: {fw.describe(clash)} removed", "forward"))
                del current[clash.name]
                clash = fw.clash(fwd, current.values())
            if clash:
                fw.refuse_clash(fwd, clash, self.vm)
            if have is not None:
                args += ["--natpf1", "delete", fwd.name]
            args += ["--natpf1", natpf_rule(fwd)]
            if info is not None:
                changes.append(Change(f"forward {fwd.name}: {fw.describe(fwd)}"
                                      + (" (replaced)" if have else " added"), "forward", fwd))
        return args, changes

    def _apply_rules_live(self, info: VMInfo, rules: List[Forward]) -> None:
        current = {f.name: f for f in info.nat_forwards()}
        for fwd in rules:
            have = current.get(fwd.name)
            if have == fwd:
                continue
            auto = fw.clash(fwd, current.values())
            if auto is not None and fw.is_auto(auto):  # as _rules_plan decided: the VM's own rule wins
                self.vbox.run(natpf_delete_argv(self.vm, auto.name, running=True))
                del current[auto.name]
            if have is None or not fw.same_socket(fwd, have):
                self._require_free(fwd)
            self._add_live(info, fwd, replace=have is not None)

    def _storage_plan(self, info: Optional[VMInfo], iso: Path, recorded: Dict[str, Any]) -> List[_Storage]:
        """[(change, action(header, total))] in the order they must run; an ISO ``recorded`` for
        the next start counts as attached."""
        plan: List[_Storage] = []
        if info is None or CONTROLLER not in info.controllers:
            plan.append(
                (
                    Change("SATA controller added", "controller"),
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
        current_iso = None if info is None else recorded.get("iso") or info.medium(CONTROLLER, ISO_PORT)
        if current_iso is None or not self._holds(info, ISO_PORT, current_iso, iso, "dvd"):
            plan.append(
                (
                    Change(f"boot ISO {current_iso} → {iso}" if current_iso else f"boot ISO {iso} attached", "iso"),
                    lambda h, t: self.vbox.run(
                        storageattach_argv(self.vm, CONTROLLER, ISO_PORT, "dvddrive", iso)
                    ),
                )
            )
        current_disk = None if info is None else info.medium(CONTROLLER, DISK_PORT)
        if current_disk is not None and not self._holds(info, DISK_PORT, current_disk, self.disk_file, "disk"):
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
            plan.append((Change(text, "disk"), self._make_and_attach_disk))
        return plan

    def _holds(self, info: Optional[VMInfo], port: int, shown: str, ours: Path, kind: str) -> bool:
        """Is the medium at ``port`` the file ``ours``? By path first; when the path showvminfo
        printed differs and one of them is not ASCII (a code set b2dkit cannot know mangles a
        non-ASCII home folder: #12 item 5), by the medium's UUID, which costs one call."""
        if paths.same_file(shown, ours):
            return True
        if shown.isascii() and str(ours).isascii():
            return False  # no code set can turn one ASCII path into another
        attached = None if info is None else info.image_uuid(CONTROLLER, port)
        return bool(attached) and ours.exists() and self.vbox.medium_uuid(ours, kind) == attached

    def _make_and_attach_disk(self, header: bytes, total: int) -> None:
        if not self.disk_file.exists():
            self._make_disk(header, total)
        self.vbox.run(storageattach_argv(self.vm, CONTROLLER, DISK_PORT, "hdd", self.disk_file))

    def _make_disk(self, header: bytes, total: int) -> None:
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
        if info.state in _UNUSABLE:
            raise state_error(self.vm, info)
        if info.state is VMState.PAUSED:
            self.vbox.run(["controlvm", self.vm, "resume"])
            return
        # VirtualBox starts the VM even when a host port is taken and only logs it, so check first.
        for fwd in info.nat_forwards():
            self._require_free(fwd)
        if info.state is VMState.STOPPED:
            self._apply_pending(info)
        self.vbox.run(["startvm", self.vm, "--type", "headless"])
        self._raise_nat_failures(self._log_of(info), 0, info.nat_forwards(), started=True)

    def stop(self, timeout: float = 30.0) -> bool:
        info = self._require()
        if info.state in (VMState.STOPPED, VMState.SAVED):
            return True
        if info.state is VMState.INACCESSIBLE:
            raise state_error(self.vm, info)
        if info.state is VMState.CRASHED:
            self._poweroff()  # a crashed guest cannot see the ACPI button
            return False
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

    def _poweroff(self) -> None:
        try:
            self.vbox.run(["controlvm", self.vm, "poweroff"])
        except HypervisorError:
            if self.state() is not VMState.STOPPED:  # "not currently running" = it just stopped
                raise

    def destroy(self, purge: bool = False) -> None:
        info = self._info()
        if info is not None and info.state is VMState.INACCESSIBLE:
            # No settings to read, so nothing to detach; without --delete VirtualBox deletes
            # nothing, and the kept disk leaves its media registry below.
            self.vbox.run(["unregistervm", info.uuid])
            if self.disk_file.exists():
                self._close_disk()
        elif info is not None:
            if info.state in (VMState.RUNNING, VMState.PAUSED, VMState.BUSY, VMState.CRASHED):
                self._poweroff()
            # unregistervm --delete deletes every attached hard disk: detach what must survive.
            iso_slot = (CONTROLLER, ISO_PORT, 0)
            for (ctl, port, dev), medium in sorted(info.storage.items()):
                if medium in ("none", "emptydrive") or (ctl, port, dev) == iso_slot:
                    continue
                if purge and paths.same_file(medium, self.disk_file):
                    continue
                self.vbox.run(storageattach_argv(self.vm, ctl, port, None, "none", device=dev))
                if paths.same_file(medium, self.disk_file):
                    self._close_disk()
            self.vbox.run(["unregistervm", self.vm, "--delete"])
        elif purge and self.disk_file.exists():
            # A disk kept by an earlier destroy (#12 item 1): out of the registry, then deleted.
            self._close_disk()
        self._uuid_file.unlink(missing_ok=True)
        if purge:
            for path in (self.disk_file, self.dir / "disk.partial.vmdk"):
                if path.exists():
                    path.unlink()

    def _close_disk(self) -> None:
        """Take the detached disk out of VirtualBox's media registry, or a new disk at this
        path (new UUID) could never be attached ("Cannot register the hard disk ... already
        exists", #12 item 1); re-attaching this one registers it again."""
        self.vbox.run(["closemedium", "disk", str(self.disk_file)])

    # -- forwards --------------------------------------------------------------------------
    def add_forward(self, fwd: Forward) -> None:
        (fwd,) = fw.check_rules([fwd])
        info = self._require()
        if info.state in _UNUSABLE:
            raise state_error(self.vm, info)
        current = {f.name: f for f in info.nat_forwards()}
        have = current.get(fwd.name)
        if have == fwd:
            return  # deterministic names: re-adding the same rule is a no-op
        held = fw.holder(fwd, current.values())
        if held:
            fw.refuse_clash(fwd, held, self.vm)  # a clash, never a replace: it may be the SSH route
        self._require_free(fwd)
        if info.state in (VMState.RUNNING, VMState.PAUSED):
            self._add_live(info, fwd, replace=False)
        else:
            self.vbox.run(["modifyvm", self.vm, "--natpf1", natpf_rule(fwd)])

    def _add_live(self, info: VMInfo, fwd: Forward, replace: bool) -> None:
        log = self._log_of(info)
        offset = log.stat().st_size if log.exists() else 0
        if replace:
            self.vbox.run(natpf_delete_argv(self.vm, fwd.name, running=True))
        self.vbox.run(natpf_add_argv(self.vm, fwd, running=True))
        self._raise_nat_failures(log, offset, [fwd], started=False)

    def remove_forward(self, name: str) -> None:
        info = self._require()
        if info.state in _UNUSABLE:
            raise state_error(self.vm, info)
        if name not in {f.name for f in info.nat_forwards()}:
            known = ", ".join(f.name for f in info.nat_forwards()) or "none"
            raise InputError(f"VM {self.vm!r} has no forward named {name!r} (it has: {known})")
        running = info.state in (VMState.RUNNING, VMState.PAUSED)
        self.vbox.run(natpf_delete_argv(self.vm, name, running))

    # -- port checks -----------------------------------------------------------------------
    def _require_free(self, fwd: Forward) -> None:
        """The shared port policy; the neighbours are asked only once a bind has failed (it costs calls)."""
        fw.require_free(fwd, neighbours=self._neighbours)

    def _neighbours(self) -> Iterator[Tuple[str, List[Forward]]]:
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

    def _raise_nat_failures(self, log: Path, offset: int, rules: List[Forward], started: bool) -> None:
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


def _later(header: bytes, total: int) -> None:
    """The action of a storage change recorded for the next start: nothing now."""


@dataclass
class _Decision:
    """What create will do to one VM: VBoxManage arguments and the change each makes."""

    info: Optional[VMInfo]
    fresh: Optional[str]  # "create" | "register" when VirtualBox has no such VM yet
    rules: List[Forward]
    settings: List[str]
    setting_changes: List[Change]
    rule_args: List[str]
    rule_changes: List[Change]
    storage: List[_Storage]  # [(change, action(header, total))]
    header: bytes  # the persistent disk's format-me header, should a disk be made
    total: int
    pending: Dict[str, Any]  # pending.json after the change: what a running VM gets at its next start

    def changes(self) -> List[Change]:
        return self.setting_changes + self.rule_changes + [change for change, _ in self.storage]


def _str(path: Optional[Path]) -> Optional[str]:
    return None if path is None else str(path)
