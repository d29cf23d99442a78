"""A stateful fake ``VBoxManage``, as strict as the real one where b2dkit depends on it.

Written from the team reference on VBoxManage (tests/fixtures/vbox/ holds its real samples): the same
syntax checking (unknown subcommand/option → usage on stderr, exit 2), output formats
(createvm, showvminfo --machinereadable, list vms, startvm, poweroff progress), error texts
and exit codes (3-line ``VBoxManage: error:`` shape, exit 1), the session lock on running
VMs, ``unregistervm --delete`` deleting attached hard disks, a media registry that knows
each disk by the UUID inside the file (not by its path), a real-shaped ``.vbox`` XML at
``CfgFile``, ``convertfromraw stdin`` that stops at EOF or at BYTES without an error (it
records what arrived, so tests can hold b2dkit to exactly BYTES), and the NAT engine of the
version: the old one starts the VM although a forwarded host port is taken (the failure only
shows in ``Logs/VBox.log``), libslirp (7.1+)
fails the power-up. What differs by version is in ``versions.py``; translations in ``l10n.py``.

Environment:
  FAKEVBOX_HOME         state dir (required): state.json, calls.log, default machine folder
  FAKEVBOX_FAULTS       e.g. ``showvminfo=not-ready*2,startvm=locked*1``: the first N calls of
                        that subcommand fail with that transient error (kinds: not-ready,
                        locked, access-denied, exit0-error; for startvm also started-exit1:
                        starts the VM, prints the success line and exits 1 (Vagrant's
                        version_5_0.rb ``start`` tolerates that), and guru: the VM goes to
                        gurumeditation right after power-up)
  FAKEVBOX_ACPI_DELAY   seconds from acpipowerbutton to poweroff (default 0: immediate)
  FAKEVBOX_ACPI_IGNORE  1 = the "guest" ignores the ACPI button (no acpid)
  FAKEVBOX_VERSION      6.1.50 | 7.0.0 | 7.0.20 (default) | 7.1.4 | 7.2.0 (or any x.y.zrNNN):
                        output formats, NAT engine, options and translations of that version
  FAKEVBOX_SVC_LANG     the language VBoxSVC runs in (default: the first caller's locale)
  FAKEVBOX_CODESET      the code set VBoxManage writes in (default utf-8; e.g. cp1252: IPRT
                        converts the standard streams to the process code set, on Windows the
                        ANSI code page; vv#7 says "likely, not tested")
"""

import contextlib
import fcntl
import json
import os
import sys
import time
from pathlib import Path

from . import l10n
from .versions import Version


# Imported when used: each call is a new process, and these imports (uuid pulls in platform,
# shutil lzma and bz2) were a good part of the fake's start-up (benchmarks/fakevbox_start.py).
def _utcnow():
    import datetime

    return datetime.datetime.utcnow()


def _uuid4():
    import uuid

    return uuid.uuid4()


def _rmtree(path, ignore_errors=False):
    import shutil

    shutil.rmtree(path, ignore_errors=ignore_errors)


PROG = "VBoxManage"
SYNTAX = 2  # RTEXITCODE_SYNTAX
FAILURE = 1
MEMORY_STATES_LOCKED = ("running", "paused", "starting", "stopping", "saving", "restoring", "gurumeditation")
V = Version.from_env()  # re-read in main(): one process is one VBoxManage call
HEADER_KEEP = 4096


class Fail(Exception):
    """A failed call; ``commit`` keeps what the command changed (it failed after acting)."""

    def __init__(self, stderr, code=FAILURE, stdout="", commit=False):
        super().__init__(stderr)
        self.stderr, self.code, self.stdout, self.commit = stderr, code, stdout, commit


def usage(cmd, problem):
    return Fail(
        f"Usage:\n\nVBoxManage {cmd} ...\n\n{PROG}: error: {problem}\n",
        SYNTAX,
    )


def vbox_error(message, code_name, hexcode, component, interface, context, line, source):
    return Fail(
        f"{PROG}: error: {message}\n"
        f"{PROG}: error: Details: code {code_name} ({hexcode}), component {component}, "
        f"interface {interface}, callee nsISupports\n"
        f'{PROG}: error: Context: "{context}" at line {line} of file {source}\n'
    )


def not_found(name, source="VBoxManageInfo.cpp"):
    return vbox_error(
        f"Could not find a registered machine named '{name}'",
        "VBOX_E_OBJECT_NOT_FOUND",
        "0x80bb0001",
        "VirtualBoxWrap",
        "IVirtualBox",
        "FindMachine(Bstr(VMNameOrUuid).raw, machine.asOutParam)",
        2781,
        source,
    )


def locked_for_session(name, source):
    return vbox_error(
        f"The machine '{name}' is already locked for a session (or being unlocked)",
        "VBOX_E_INVALID_OBJECT_STATE",
        "0x80bb0007",
        "MachineWrap",
        "IMachine",
        "LockMachine(a->session, LockType_Write)",
        640,
        source,
    )


def rule_exists(source, what="of this name"):
    return Fail(
        f"{PROG}: error: A NAT rule {what} already exists\n"
        f"{PROG}: error: Details: code E_INVALIDARG (0x80070057), component NATEngineWrap, "
        "interface INATEngine, callee IUnknown\n"
        f'{PROG}: error: Context: "AddRedirect(Bstr(strName).raw, proto, Bstr(strHostIp).raw, '
        'RTStrToUInt16(strHostPort), Bstr(strGuestIp).raw, RTStrToUInt16(strGuestPort))" '
        f"at line 1851 of file {source}\n"
    )


def rule_unknown(source):
    return Fail(
        f"{PROG}: error: Code E_INVALIDARG (0x80070057) - One or more arguments are invalid "
        "(extended info not available)\n"
        f'{PROG}: error: Context: "RemoveRedirect(Bstr(a->argv[3]).raw)" at line 511 of file {source}\n'
    )


def not_running(name):
    return Fail(f"{PROG}: error: Machine '{name}' is not currently running\n")


TRANSIENT = {
    "not-ready": "VBoxManage: error: The object is not ready\n",
    "locked": "VBoxManage: error: The machine 'x' is already locked by a session "
    "(or being locked or unlocked)\n",
    "access-denied": "VBoxManage: error: The object is not ready (E_ACCESSDENIED)\n",
}


# ---------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------


class State:
    def __init__(self, home: Path):
        self.home = home
        self.path = home / "state.json"
        self.data = {"machines": {}, "faults": {}}

    @contextlib.contextmanager
    def locked(self):
        with open(self.home / "state.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.path.exists():
                self.data = json.loads(self.path.read_text())
            try:
                yield self
            except Fail as fail:
                if not fail.commit:
                    raise
                self._save()
                raise
            self._save()

    def _save(self):
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    @property
    def machines(self):
        return self.data["machines"]

    def find(self, name_or_uuid, source="VBoxManageInfo.cpp", inaccessible_ok=False):
        """A registered VM by name or UUID.

        A VM whose .vbox file is gone is *inaccessible*: VirtualBox cannot read its name, so
        it is found by UUID only ("we can't ask inaccessible machines for their names").
        GUESS: real VBoxSVC notices a deleted .vbox when it (re)loads the machine; the fake
        checks on every call, as if VBoxSVC had been restarted since.
        """
        for name, m in self.machines.items():
            if m["uuid"] == name_or_uuid or (name == name_or_uuid and accessible(m)):
                if not accessible(m) and not inaccessible_ok:
                    raise vbox_error(
                        "The machine is inaccessible",  # GUESS: the text of this refusal
                        "VBOX_E_INVALID_OBJECT_STATE",
                        "0x80bb0007",
                        "MachineWrap",
                        "IMachine",
                        "OpenSession",
                        1,
                        source,
                    )
                self.tick(m)
                return m
        raise not_found(name_or_uuid, source)

    @property
    def svc_lang(self):
        """The language VBoxSVC runs in: the first caller's, unless FAKEVBOX_SVC_LANG says."""
        return os.environ.get("FAKEVBOX_SVC_LANG") or self.data.setdefault("svc_lang", l10n.process_language())

    @staticmethod
    def tick(m):
        """Advance time-based transitions: a pressed ACPI button powers the guest off."""
        due = m.get("acpi_off_at")
        if due is not None and m["state"] == "running" and time.time() >= due:
            set_state(m, "poweroff")
            m.pop("acpi_off_at", None)


def accessible(m):
    return Path(m["cfg_file"]).is_file()


def set_state(m, state):
    m["state"] = state
    m["state_changed"] = _utcnow().strftime("%Y-%m-%dT%H:%M:%S.%f000")


BOOT_XML = {"floppy": "Floppy", "dvd": "DVD", "disk": "HardDisk", "net": "Network", "none": "None"}
CONTROLLER_XML = {"IntelAhci": "AHCI", "PIIX4": "PIIX4"}
DEVICE_XML = {"hdd": "HardDisk", "dvddrive": "DVD", "fdd": "Floppy"}


def save_settings(m):
    """The .vbox file, in VirtualBox's settings format, rewritten on every change like the real one.

    Shape from Vagrant's 7.0 fixture (``virtualbox_driver_version_7_x_examples.rb``
    VBOX_VMCONFIG_FILE) and VirtualBox's settings schema: ``Machine/Hardware/Network/Adapter``
    with ``NAT/Forwarding`` (``proto`` 1 = tcp, 0 = udp; empty IPs left out), the media registry
    of the machine, and its storage controllers. Settings b2dkit never touches are left out
    (a real file has many more); registervm reads back only what is written here.
    """
    import xml.etree.ElementTree as ET  # here, not at the top: most calls write no settings

    cfg = Path(m["cfg_file"])
    cfg.parent.mkdir(parents=True, exist_ok=True)
    root = ET.Element("VirtualBox", {"xmlns": "http://www.virtualbox.org/", "version": V.settings_version})
    mach = ET.SubElement(
        root,
        "Machine",
        {"uuid": "{%s}" % m["uuid"], "name": m["name"], "OSType": m["ostype"], "snapshotFolder": "Snapshots"},
    )
    if m.get("description"):
        ET.SubElement(mach, "Description").text = m["description"]
    registry = ET.SubElement(mach, "MediaRegistry")
    disks, dvds = ET.SubElement(registry, "HardDisks"), ET.SubElement(registry, "DVDImages")
    for slots in m["attachments"].values():
        for att in slots.values():
            if att["medium"]:
                parent, tag = (disks, "HardDisk") if att["type"] == "hdd" else (dvds, "Image")
                extra = {"format": "VMDK", "type": "Normal"} if tag == "HardDisk" else {}
                ET.SubElement(parent, tag, {"uuid": "{%s}" % att["uuid"], "location": att["medium"], **extra})
    hw = ET.SubElement(mach, "Hardware")
    ET.SubElement(hw, "CPU", {"count": str(m["cpus"])})
    ET.SubElement(hw, "Memory", {"RAMSize": str(m["memory"])})
    boot = ET.SubElement(hw, "Boot")
    for i, dev in enumerate(m["boot"], 1):
        ET.SubElement(boot, "Order", {"position": str(i), "device": BOOT_XML[dev]})
    net = ET.SubElement(hw, "Network")
    for slot, nic in sorted(m["nics"].items(), key=lambda kv: int(kv[0])):
        if nic["type"] == "none":
            continue
        adapter = ET.SubElement(
            net,
            "Adapter",
            {
                "slot": str(int(slot) - 1),
                "enabled": "true",
                "MACAddress": nic.get("mac", "080027000000"),
                "cable": "true" if nic["cable"] == "on" else "false",
                "type": nic["nictype"],
            },
        )
        if nic["type"] == "nat":
            attrs = {}
            if nic.get("localhost_reachable") is not None:
                attrs["localhost-reachable"] = "true" if nic["localhost_reachable"] == "on" else "false"
            nat = ET.SubElement(adapter, "NAT", attrs)
            if nic.get("dnsproxy") == "on":
                ET.SubElement(nat, "DNS", {"use-proxy": "true"})
            for name in sorted(nic["rules"]):
                r = nic["rules"][name]
                attrs = {"name": name, "proto": "1" if r["proto"] == "tcp" else "0"}
                if r["host_ip"]:
                    attrs["hostip"] = r["host_ip"]
                attrs["hostport"] = str(r["host_port"])
                if r["guest_ip"]:
                    attrs["guestip"] = r["guest_ip"]
                attrs["guestport"] = str(r["guest_port"])
                ET.SubElement(nat, "Forwarding", attrs)
        else:
            ET.SubElement(adapter, nic["type"].capitalize())
    controllers = ET.SubElement(hw, "StorageControllers")
    for ctl in m["controllers"]:
        el = ET.SubElement(
            controllers,
            "StorageController",
            {
                "name": ctl["name"],
                "type": CONTROLLER_XML.get(ctl["type"], ctl["type"]),
                "PortCount": str(ctl["portcount"]),
                "useHostIOCache": "true" if ctl["hostiocache"] == "on" else "false",
                "Bootable": "true" if ctl["bootable"] == "on" else "false",
            },
        )
        for key, att in sorted(m["attachments"].get(ctl["name"], {}).items()):
            port, device = key.split("-")
            dev = ET.SubElement(
                el, "AttachedDevice", {"type": DEVICE_XML[att["type"]], "port": port, "device": device}
            )
            if att["medium"]:
                ET.SubElement(dev, "Image", {"uuid": "{%s}" % att["uuid"]})
    ET.indent(root, "  ")
    tmp = cfg.with_name(cfg.name + "-tmp")
    tmp.write_text('<?xml version="1.0"?>\n' + ET.tostring(root, encoding="unicode") + "\n")
    os.replace(tmp, cfg)


def load_settings(path: Path) -> dict:
    """registervm: a machine dict back from the .vbox written by ``save_settings``."""
    import xml.etree.ElementTree as ET

    ns = {"v": "http://www.virtualbox.org/"}
    root = ET.parse(path).getroot()
    mach = root.find("v:Machine", ns)
    m = new_machine(mach.get("name"), mach.get("OSType"), path.absolute())
    m["uuid"] = mach.get("uuid").strip("{}")
    desc = mach.find("v:Description", ns)
    if desc is not None:
        m["description"] = desc.text or ""
    locations = {
        el.get("uuid").strip("{}"): el.get("location") for el in mach.iterfind("v:MediaRegistry/*/*", ns)
    }
    hw = mach.find("v:Hardware", ns)
    m["cpus"] = int(hw.find("v:CPU", ns).get("count"))
    m["memory"] = int(hw.find("v:Memory", ns).get("RAMSize"))
    back = {v: k for k, v in BOOT_XML.items()}
    for order in hw.iterfind("v:Boot/v:Order", ns):
        m["boot"][int(order.get("position")) - 1] = back[order.get("device")]
    for adapter in hw.iterfind("v:Network/v:Adapter", ns):
        nic = m["nics"][str(int(adapter.get("slot")) + 1)]
        nic.update(mac=adapter.get("MACAddress"), nictype=adapter.get("type"), rules={})
        nic["cable"] = "on" if adapter.get("cable", "true") == "true" else "off"
        nat = adapter.find("v:NAT", ns)
        nic["type"] = "nat" if nat is not None else adapter[0].tag.split("}")[1].lower()
        if nat is not None:
            if nat.get("localhost-reachable") is not None:
                nic["localhost_reachable"] = "on" if nat.get("localhost-reachable") == "true" else "off"
            dns = nat.find("v:DNS", ns)
            nic["dnsproxy"] = "on" if dns is not None and dns.get("use-proxy") == "true" else "off"
            for fwd in nat.iterfind("v:Forwarding", ns):
                nic["rules"][fwd.get("name")] = {
                    "proto": "tcp" if fwd.get("proto") == "1" else "udp",
                    "host_ip": fwd.get("hostip", ""),
                    "host_port": int(fwd.get("hostport")),
                    "guest_ip": fwd.get("guestip", ""),
                    "guest_port": int(fwd.get("guestport")),
                }
    back_ctl = {v: k for k, v in CONTROLLER_XML.items()}
    back_dev = {v: k for k, v in DEVICE_XML.items()}
    for el in hw.iterfind("v:StorageControllers/v:StorageController", ns):
        name = el.get("name")
        m["controllers"].append(
            {
                "name": name,
                "type": back_ctl.get(el.get("type"), el.get("type")),
                "portcount": int(el.get("PortCount")),
                "bootable": "on" if el.get("Bootable") == "true" else "off",
                "hostiocache": "on" if el.get("useHostIOCache") == "true" else "off",
            }
        )
        for dev in el.iterfind("v:AttachedDevice", ns):
            image = dev.find("v:Image", ns)
            med_uuid = image.get("uuid").strip("{}") if image is not None else None
            m["attachments"].setdefault(name, {})[f"{dev.get('port')}-{dev.get('device')}"] = {
                "type": back_dev[dev.get("type")],
                "medium": locations.get(med_uuid),
                "uuid": med_uuid,
            }
    return m


def new_machine(name, ostype, cfg_file):
    m = {
        "name": name,
        "uuid": str(_uuid4()),
        "ostype": ostype,
        "cfg_file": str(cfg_file),
        "memory": 128,
        "cpus": 1,
        "vram": 8,
        "acpi": "on",
        "ioapic": "off",
        "rtcuseutc": "off",
        "boot": ["floppy", "dvd", "disk", "none"],
        "nics": {
            str(i): {
                "type": "nat" if i == 1 else "none",
                "nictype": "82540EM",
                "cable": "on",
                "rules": {},
                "dnsproxy": "off",
                "localhost_reachable": None,  # 7.x default: off (vv#11); 6.1 has no such setting
            }
            for i in range(1, 9)
        },
        "controllers": [],
        "attachments": {},
        "uart1": "off",
        "uartmode1": "disconnected",
        "extra": {},
    }
    m["nics"]["1"]["mac"] = _uuid4().hex[:12].upper()
    set_state(m, "poweroff")
    return m


# ---------------------------------------------------------------------------------------------
# showvminfo --machinereadable, in VirtualBox's key order (vbox-samples/*saved_state*, issue3286)
# ---------------------------------------------------------------------------------------------

OSTYPES = {
    "Linux26_64": "Linux 2.6 / 3.x / 4.x (64-bit)",
    "Linux26": "Linux 2.6 / 3.x / 4.x (32-bit)",
    "Other": "Other/Unknown",
    "Ubuntu_64": "Ubuntu (64-bit)",
}


def q(value):
    """outputMachineReadableString: escape double quotes and backslashes, not newlines."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def machinereadable(m):
    cfg = Path(m["cfg_file"])
    if not accessible(m):
        # VBoxManageInfo.cpp showVMInfo: an inaccessible machine prints these two lines only
        return f'name="<inaccessible>"\nUUID="{m["uuid"]}"\n'
    lines = [f"name={q(m['name'])}"]
    if V.stray_encryption_line:
        lines.append("Encryption:     disabled")  # 7.0.x: the human line, in machine-readable output
    elif V.encryption_key:
        lines.append('encryption="disabled"')
    lines.append('groups="/"')
    if V.platform_key:
        lines.append('platformArchitecture="x86"')
    lines += [
        f"ostype={q(OSTYPES.get(m['ostype'], m['ostype']))}",
        f"UUID={q(m['uuid'])}",
        f"CfgFile={q(cfg)}",
        f"SnapFldr={q(cfg.parent / 'Snapshots')}",
        f"LogFldr={q(cfg.parent / 'Logs')}",
        f"hardwareuuid={q(m['uuid'])}",
        f"memory={m['memory']}",
        'pagefusion="off"',
        f"vram={m['vram']}",
        "cpuexecutioncap=100",
        'hpet="off"',
        'chipset="piix3"',
        'firmware="BIOS"',
        f"cpus={m['cpus']}",
        'pae="on"',
        'longmode="on"',
        'triplefaultreset="off"',
        'apic="on"',
        'x2apic="on"',
        "cpuid-portability-level=0",
        'bootmenu="messageandmenu"',
    ]
    lines += [f"boot{i}={q(dev)}" for i, dev in enumerate(m["boot"], 1)]
    lines += [
        f"acpi={q(m['acpi'])}",
        f"ioapic={q(m['ioapic'])}",
        'biosapic="apic"',
        "biossystemtimeoffset=0",
        f"rtcuseutc={q(m['rtcuseutc'])}",
        'hwvirtex="on"',
        'nestedpaging="on"',
        'largepages="on"',
        'vtxvpid="on"',
        'vtxux="on"',
        'paravirtprovider="default"',
        'effparavirtprovider="kvm"',
        f"VMState={q(m['state'])}",
        f"VMStateChangeTime={q(m['state_changed'])}",
        "monitorcount=1",
        'accelerate3d="off"',
        'accelerate2dvideo="off"',
        'teleporterenabled="off"',
        "teleporterport=0",
        'teleporteraddress=""',
        'teleporterpassword=""',
        'tracing-enabled="off"',
        'tracing-allow-vm-access="off"',
        'tracing-config=""',
        'autostart-enabled="off"',
        "autostart-delay=0",
        'defaultfrontend=""',
    ]
    for i, ctl in enumerate(m["controllers"]):
        lines += [
            f"storagecontrollername{i}={q(ctl['name'])}",
            f"storagecontrollertype{i}={q(ctl['type'])}",
            f'storagecontrollerinstance{i}="0"',
            f'storagecontrollermaxportcount{i}="30"',
            f"storagecontrollerportcount{i}={q(ctl['portcount'])}",
            f"storagecontrollerbootable{i}={q(ctl['bootable'])}",
        ]
    for ctl in m["controllers"]:
        slots = m["attachments"].get(ctl["name"], {})
        for port in range(ctl["portcount"]):
            att = slots.get(f"{port}-0")
            key = f"{ctl['name']}-{port}-0"
            if att is None:
                lines.append(f'{q(key)}="none"')
                continue
            medium = att["medium"] or "emptydrive"
            lines.append(f"{q(key)}={q(medium)}")
            # showMediumAttachments: before 7.0 tempeject/IsEjected lacked "-port-unit"
            slot = f"-{port}-0" if V.slot_keys_with_port else ""
            name = ctl["name"]
            if att["medium"]:
                lines.append(f"{q(name + '-ImageUUID-' + str(port) + '-0')}={q(att['uuid'])}")
                if att["type"] == "dvddrive":
                    lines.append(f'{q(name + "-tempeject" + slot)}="off"')
            if att["type"] == "dvddrive":
                lines.append(f'{q(name + "-IsEjected" + slot)}="off"')
            if att["medium"] and V.per_medium_flags:
                if name.upper() in ("SATA", "USB"):
                    lines.append(f'{q(f"{name}-hot-pluggable-{port}-0")}="off"')
                lines.append(f'{q(f"{name}-nonrotational-{port}-0")}="off"')
                lines.append(f'{q(f"{name}-discard-{port}-0")}="off"')
    for i in range(1, 9):
        nic = m["nics"][str(i)]
        if nic["type"] == "none":
            lines.append(f'nic{i}="none"')
            continue
        if nic["type"] == "nat":
            lines.append(f'natnet{i}="nat"')
        lines += [
            f"macaddress{i}={q(nic.get('mac', '080027000000'))}",
            f"cableconnected{i}={q(nic['cable'])}",
            f"nic{i}={q(nic['type'])}",
            f"nictype{i}={q(nic['nictype'])}",
            f'nicspeed{i}="0"',
        ]
        if nic["type"] == "nat":
            lines += ['mtu="0"', 'sockSnd="64"', 'sockRcv="64"', 'tcpWndSnd="64"', 'tcpWndRcv="64"']
            # The NAT engine keeps rules in a map keyed by name: output is ordered by name.
            # 7.0.0 printed none once there was more than one (Vagrant version_7_0.rb).
            hidden = V.hides_forwarding_over_one_rule and len(nic["rules"]) > 1
            for n, name in enumerate([] if hidden else sorted(nic["rules"])):
                r = nic["rules"][name]
                lines.append(
                    f'Forwarding({n})="{name},{r["proto"]},{r["host_ip"]},{r["host_port"]},'
                    f'{r["guest_ip"]},{r["guest_port"]}"'
                )
    lines += ['hidpointing="ps2mouse"', 'hidkeyboard="ps2kbd"']
    if m["uart1"] == "off":
        lines.append('uart1="off"')
    else:
        lines += [f"uart1={q(m['uart1'])}", f"uartmode1={q(m['uartmode1'])}"]
    lines += ['uart2="off"', 'uart3="off"', 'uart4="off"', 'lpt1="off"', 'lpt2="off"']
    lines += ['audio="none"', 'clipboard="disabled"', 'draganddrop="disabled"', 'vrde="off"']
    lines += ['usb="off"', 'ehci="off"', 'xhci="off"']
    if m.get("description"):
        lines.append(f"description={q(m['description'])}")
    lines += ["videocapopts=", "GuestMemoryBalloon=0"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------

ONOFF = ("on", "off")


class Args:
    """A tiny RTGetOpt: options with a fixed number of values, unknown → syntax error."""

    def __init__(self, cmd, argv):
        self.cmd, self.argv, self.i = cmd, list(argv), 0

    def more(self):
        return self.i < len(self.argv)

    def next(self, what="value"):
        if self.i >= len(self.argv):
            raise usage(self.cmd, f"Missing {what}")
        self.i += 1
        return self.argv[self.i - 1]

    def peek(self):
        return self.argv[self.i] if self.more() else None


def cmd_version(state, args):
    if args:
        raise usage("--version", f"Unknown option: {args[0]}")
    return V.text + "\n"


def cmd_list(state, args):
    if len(args) != 1:
        raise usage("list", "Missing or too many arguments")
    what = args[0]
    if what == "vms":
        vms = state.machines.values()
    elif what == "runningvms":
        for m in state.machines.values():
            State.tick(m)
        vms = [m for m in state.machines.values() if m["state"] == "running"]
    elif what in ("hostonlyifs", "dhcpservers", "natnets"):
        return ""
    else:
        raise usage("list", f"Unknown subcommand: {what}")
    # an inaccessible VM is listed as "<inaccessible>" {uuid} (VBoxManageInfo.cpp, VMINFO_COMPACT)
    return "".join(f'"{m["name"] if accessible(m) else "<inaccessible>"}" {{{m["uuid"]}}}\n' for m in vms)


def cmd_createvm(state, args):
    a = Args("createvm", args)
    name = ostype = basefolder = None
    register = False
    while a.more():
        opt = a.next()
        if opt == "--name":
            name = a.next("name")
        elif opt == "--ostype":
            ostype = a.next("ostype")
        elif opt == "--basefolder":
            basefolder = a.next("basefolder")
        elif opt == "--register":
            register = True
        else:
            raise usage("createvm", f"Unknown option: {opt}")
    if not name:
        raise usage("createvm", "Parameter --name is required")
    if ostype and ostype not in OSTYPES:
        raise vbox_error(
            f"Guest OS type '{ostype}' is invalid",
            "E_INVALIDARG",
            "0x80070057",
            "VirtualBoxWrap",
            "IVirtualBox",
            "CreateMachine(...)",
            310,
            "VBoxManageMisc.cpp",
        )
    base = Path(basefolder) if basefolder else state.home / "VirtualBox VMs"
    cfg = (base / name / f"{name}.vbox").absolute()
    ghost = state.machines.get(name)
    if register and ghost is not None and not accessible(ghost):
        # An inaccessible VM has no name VirtualBox can read, so the name is free again; the
        # ghost stays registered under its UUID (GUESS: the name check skips such machines).
        state.machines[f"<inaccessible {ghost['uuid']}>"] = state.machines.pop(name)
    if register and any(n == name for n in state.machines):
        raise vbox_error(
            f"Machine settings file '{cfg}' already exists",
            "VBOX_E_FILE_ERROR",
            "0x80bb000c",
            "MachineWrap",
            "IMachine",
            "CreateMachine(...)",
            312,
            "VBoxManageMisc.cpp",
        )
    if cfg.exists():
        # the short text of the reference sample (a leftover folder of an unregistered VM)
        raise vbox_error(
            "Machine settings file already exists",
            "VBOX_E_FILE_ERROR",
            "0x80bb000c",
            "MachineWrap",
            "IMachine",
            "CreateMachine(...)",
            312,
            "VBoxManageMisc.cpp",
        )
    m = new_machine(name, ostype or "Other", cfg)
    save_settings(m)
    if register:
        state.machines[name] = m
        head = f"Virtual machine '{name}' is created and registered.\n"
    else:
        head = f"Virtual machine '{name}' is created.\n"
    return f"{head}UUID: {m['uuid']}\nSettings file: '{cfg}'\n"


def cmd_registervm(state, args):
    if len(args) != 1:
        raise usage("registervm", "Incorrect number of parameters")
    path = Path(args[0])
    if not path.is_file():
        raise vbox_error(
            f"Could not find file for the settings '{path}' (VERR_FILE_NOT_FOUND)",
            "VBOX_E_FILE_ERROR",
            "0x80bb000c",
            "MachineWrap",
            "IMachine",
            "OpenMachine(Bstr(a->argv[0]).raw, machine.asOutParam())",
            120,
            "VBoxManageMisc.cpp",
        )
    body = load_settings(path)
    if body["name"] in state.machines:
        raise vbox_error(
            f"Cannot register the machine '{body['name']}' because a machine with the same name "
            "already exists",
            "VBOX_E_OBJECT_IN_USE",
            "0x80bb000c",
            "VirtualBoxWrap",
            "IVirtualBox",
            "RegisterMachine(machine)",
            126,
            "VBoxManageMisc.cpp",
        )
    body["cfg_file"] = str(path.absolute())
    set_state(body, "poweroff")
    state.machines[body["name"]] = body
    return ""


def cmd_showvminfo(state, args):
    a = Args("showvminfo", args)
    vm = a.next("VM name")
    readable = False
    while a.more():
        opt = a.next()
        if opt == "--machinereadable":
            readable = True
        elif opt in ("--details", "--log"):
            raise usage("showvminfo", f"Option {opt} is not supported by this fake")
        else:
            raise usage("showvminfo", f"Unknown option: {opt}")
    m = state.find(vm, "VBoxManageInfo.cpp", inaccessible_ok=True)
    if readable:
        return machinereadable(m)
    return f"Name:            {m['name']}\nUUID:            {m['uuid']}\nState:           {m['state']}\n"


def _bool(cmd, opt, value):
    if value not in ONOFF:
        raise usage(cmd, f"Invalid {opt} argument '{value}'")
    return value


def _int(cmd, opt, value):
    try:
        return int(value)
    except ValueError:
        raise usage(cmd, f"Invalid {opt} argument '{value}'") from None


IGNORED_ONOFF = {
    "--pae",
    "--longmode",
    "--hpet",
    "--hwvirtex",
    "--nestedpaging",
    "--largepages",
    "--vtxvpid",
    "--vtxux",
    "--accelerate3d",
    "--cpuhotplug",
    "--triplefaultreset",
    "--bioslogofadein",
    "--bioslogofadeout",
    "--natdnshostresolver1",
}
IGNORED_VALUE = {
    "--firmware",
    "--bioslogodisplaytime",
    "--biosbootmenu",
    "--nicpromisc2",
    "--graphicscontroller",
}


def parse_rule(cmd, text, source):
    parts = text.split(",")
    if len(parts) != 6:
        raise usage(cmd, f"Invalid NAT rule '{text}'")
    name, proto, host_ip, host_port, guest_ip, guest_port = parts
    if proto not in ("tcp", "udp"):
        raise usage(cmd, f"Invalid proto '{proto}' specified for NIC 1")
    try:
        hp, gp = int(host_port), int(guest_port)
    except ValueError:
        raise usage(cmd, f"Invalid NAT rule '{text}'") from None
    if not name:
        raise usage(cmd, "NAT rule name is empty")
    return name, {"proto": proto, "host_ip": host_ip, "host_port": hp, "guest_ip": guest_ip, "guest_port": gp}


def add_rule(nic, name, rule, source):
    if name in nic["rules"]:
        raise rule_exists(source)
    for other in nic["rules"].values():
        if (other["host_ip"], other["host_port"], other["proto"]) == (
            rule["host_ip"],
            rule["host_port"],
            rule["proto"],
        ):
            raise rule_exists(source, "for this host port and this host IP")
    nic["rules"][name] = rule


def cmd_modifyvm(state, args):
    a = Args("modifyvm", args)
    vm = a.next("VM name")
    m = state.find(vm, "VBoxManageModifyVM.cpp")
    if m["state"] in MEMORY_STATES_LOCKED:
        raise locked_for_session(m["name"], "VBoxManageModifyVM.cpp")
    src = "VBoxManageModifyVM.cpp"
    if not a.more():
        raise usage("modifyvm", "No options given")
    while a.more():
        opt = a.next()
        if opt == "--memory":
            m["memory"] = _int("modifyvm", opt, a.next(opt))
        elif opt == "--cpus":
            m["cpus"] = _int("modifyvm", opt, a.next(opt))
        elif opt == "--vram":
            m["vram"] = _int("modifyvm", opt, a.next(opt))
        elif opt == "--ostype":
            value = a.next(opt)
            if value not in OSTYPES:
                raise Fail(f"{PROG}: error: Invalid guest OS type '{value}'\n")
            m["ostype"] = value
        elif opt in ("--acpi", "--ioapic", "--rtcuseutc"):
            m[opt[2:]] = _bool("modifyvm", opt, a.next(opt))
        elif opt in ("--boot1", "--boot2", "--boot3", "--boot4"):
            value = a.next(opt)
            if value not in ("none", "floppy", "dvd", "disk", "net"):
                raise usage("modifyvm", f"Invalid boot device '{value}'")
            m["boot"][int(opt[-1]) - 1] = value
        elif opt.startswith("--nictype") and opt[9:].isdigit():
            m["nics"][_nic(opt[9:])]["nictype"] = a.next(opt)
        elif opt.startswith("--nic") and opt[5:].isdigit():
            value = a.next(opt)
            if value not in ("none", "null", "nat", "bridged", "intnet", "hostonly", "generic", "natnetwork"):
                raise usage("modifyvm", f"Invalid type '{value}' specfied for NIC {opt[5:]}")
            m["nics"][_nic(opt[5:])]["type"] = value
        elif opt.startswith("--cableconnected") and opt[16:].isdigit():
            m["nics"][_nic(opt[16:])]["cable"] = _bool("modifyvm", opt, a.next(opt))
        elif opt.startswith("--natpf") and opt[7:].isdigit():
            nic = m["nics"][_nic(opt[7:])]
            value = a.next(opt)
            if value == "delete":
                name = a.next("rule name")
                if name not in nic["rules"]:
                    raise Fail(
                        f"{PROG}: error: Code E_INVALIDARG (0x80070057) - One or more arguments are invalid "
                        "(extended info not available)\n"
                        f'{PROG}: error: Context: "RemoveRedirect(Bstr(ValueUnion.psz).raw)" at line 1878 '
                        f"of file {src}\n"
                    )
                del nic["rules"][name]
            else:
                name, rule = parse_rule("modifyvm", value, src)
                add_rule(nic, name, rule, src)
        elif opt == "--uart1":
            value = a.next(opt)
            m["uart1"] = "off" if value == "off" else f"{value},{a.next('IRQ')}"
        elif opt == "--uartmode1":
            value = a.next(opt)
            m["uartmode1"] = value if value == "disconnected" else f"{value},{a.next('path')}"
        elif opt == "--description":
            m["description"] = a.next(opt)
        elif opt.startswith("--natdnsproxy") and opt[13:].isdigit():
            m["nics"][_nic(opt[13:])]["dnsproxy"] = _bool("modifyvm", opt, a.next(opt))
        elif (
            opt.startswith(("--nat-localhostreachable", "--natlocalhostreachable"))
            and opt.rstrip("0123456789") in ("--nat-localhostreachable", "--natlocalhostreachable")
            and V.localhost_reachable_option
        ):
            # OPT2("--nat-localhostreachable", "--natlocalhostreachable") exists in 7.x only; 6.1
            # falls through to "Unknown option" below (vv#11)
            n = opt[len(opt.rstrip("0123456789")) :]
            m["nics"][_nic(n)]["localhost_reachable"] = _bool("modifyvm", opt, a.next(opt))
        elif opt.startswith("--hostonlyadapter") and opt[17:].isdigit():
            a.next(opt)
        elif opt in IGNORED_ONOFF:
            _bool("modifyvm", opt, a.next(opt))
        elif opt in IGNORED_VALUE:
            a.next(opt)
        else:
            raise usage("modifyvm", f"Unknown option: {opt}")
    save_settings(m)
    return ""


def _nic(text):
    n = int(text)
    if not 1 <= n <= 8:
        raise usage("modifyvm", f"Invalid NIC number {n}")
    return str(n)


def cmd_storagectl(state, args):
    a = Args("storagectl", args)
    vm = a.next("VM name")
    name = add = None
    portcount, bootable, hostiocache = 30, "on", "off"
    remove = False
    while a.more():
        opt = a.next()
        if opt == "--name":
            name = a.next(opt)
        elif opt == "--add":
            add = a.next(opt)
            if add not in ("ide", "sata", "scsi", "floppy", "sas", "usb", "pcie", "virtio"):
                raise usage("storagectl", f"Invalid --add argument '{add}'")
        elif opt == "--portcount":
            portcount = _int("storagectl", opt, a.next(opt))
        elif opt == "--bootable":
            bootable = _bool("storagectl", opt, a.next(opt))
        elif opt == "--hostiocache":
            hostiocache = _bool("storagectl", opt, a.next(opt))
        elif opt == "--controller":
            a.next(opt)
        elif opt == "--remove":
            remove = True
        else:
            raise usage("storagectl", f"Unknown option: {opt}")
    if not name:
        raise usage("storagectl", "Storage controller name not specified")
    m = state.find(vm, "VBoxManageStorageController.cpp")
    if m["state"] in MEMORY_STATES_LOCKED:
        raise locked_for_session(m["name"], "VBoxManageStorageController.cpp")
    existing = [c for c in m["controllers"] if c["name"] == name]
    if remove:
        if not existing:
            raise Fail(f"{PROG}: error: Couldn't find the controller with the name: '{name}'\n")
        m["controllers"].remove(existing[0])
        m["attachments"].pop(name, None)
    elif add:
        if existing:
            raise vbox_error(
                f"Storage controller named '{name}' already exists",
                "VBOX_E_OBJECT_IN_USE",
                "0x80bb000c",
                "SessionMachine",
                "IMachine",
                "AddStorageController(...)",
                1106,
                "VBoxManageStorageController.cpp",
            )
        kind = {"sata": "IntelAhci", "ide": "PIIX4"}.get(add, add)
        m["controllers"].append(
            {
                "name": name,
                "type": kind,
                "portcount": portcount,
                "bootable": bootable,
                "hostiocache": hostiocache,
            }
        )
    elif not existing:
        raise Fail(f"{PROG}: error: Couldn't find the controller with the name: '{name}'\n")
    save_settings(m)
    return ""


def cmd_storageattach(state, args):
    a = Args("storageattach", args)
    vm = a.next("VM name")
    ctl = port = device = kind = medium = None
    while a.more():
        opt = a.next()
        if opt == "--storagectl":
            ctl = a.next(opt)
        elif opt == "--port":
            port = _int("storageattach", opt, a.next(opt))
        elif opt == "--device":
            device = _int("storageattach", opt, a.next(opt))
        elif opt == "--type":
            kind = a.next(opt)
            if kind not in ("dvddrive", "hdd", "fdd"):
                raise usage("storageattach", f"Invalid --type argument '{kind}'")
        elif opt == "--medium":
            medium = a.next(opt)
        elif opt in ("--nonrotational", "--discard", "--hotpluggable", "--mtype", "--comment"):
            a.next(opt)
        else:
            raise usage("storageattach", f"Unknown option: {opt}")
    if ctl is None or port is None or medium is None:
        raise usage("storageattach", "Storage controller name, port and medium must be specified")
    device = device or 0
    m = state.find(vm, "VBoxManageStorageController.cpp")
    if m["state"] in MEMORY_STATES_LOCKED:
        raise locked_for_session(m["name"], "VBoxManageStorageController.cpp")
    controller = next((c for c in m["controllers"] if c["name"] == ctl), None)
    if controller is None:
        raise Fail(f"{PROG}: error: Couldn't find the controller with the name: '{ctl}'\n")
    if port >= controller["portcount"]:
        raise Fail(
            f"{PROG}: error: The port number {port} is out of range [0-{controller['portcount'] - 1}]\n"
        )
    slots = m["attachments"].setdefault(ctl, {})
    slot = f"{port}-{device}"
    if medium == "none":
        slots.pop(slot, None)
    else:
        if kind is None:
            raise usage("storageattach", "Missing --type")
        if medium == "emptydrive":
            path, med_uuid = None, None
        else:
            path = str(Path(medium).absolute())
            if not Path(path).is_file():
                raise vbox_error(
                    f"Could not find file for the medium '{path}' (VERR_FILE_NOT_FOUND)",
                    "VBOX_E_FILE_ERROR",
                    "0x80bb0004",
                    "MediumWrap",
                    "IMedium",
                    "OpenMedium(Bstr(pszMedium).raw, ...)",
                    1170,
                    "VBoxManageStorageController.cpp",
                )
            for other in state.machines.values():
                for oslots in other["attachments"].values():
                    for key, att in oslots.items():
                        if (
                            att["medium"] == path
                            and att["type"] == "hdd"
                            and kind == "hdd"
                            and (other is not m or key != slot)
                        ):
                            raise vbox_error(
                                f"Medium '{path}' is already attached to another virtual machine",
                                "VBOX_E_OBJECT_IN_USE",
                                "0x80bb000c",
                                "SessionMachine",
                                "IMachine",
                                "AttachDevice(...)",
                                1201,
                                "VBoxManageStorageController.cpp",
                            )
            med_uuid = open_medium(state, path, kind)
        slots[slot] = {"type": kind, "medium": path, "uuid": med_uuid}
    save_settings(m)
    return ""


def file_uuid(path):
    """The UUID a disk image carries in its header (the fake's VMDKs keep it in their metadata);
    None for raw images such as ISOs, which VirtualBox knows by location only."""
    try:
        with open(path, "rb") as fh:
            if fh.readline() != b"# fakevbox VMDK\n":
                return None
            return json.loads(fh.readline())["uuid"]
    except (OSError, ValueError, KeyError):
        return None


def open_medium(state, path, kind):
    """OpenMedium: the media registry knows a medium by the UUID in its file, not by its path.

    ``storageattach --medium none`` and a deleted file leave the entry (reference vv#1), so a new
    file at the same path has a new UUID and cannot be registered until ``closemedium``.
    Simplification: the fake's VBoxSVC never exits, so stale entries live until closed.
    """
    media = state.data.setdefault("media", {})
    found = file_uuid(path)
    old = next((u for u, e in media.items() if e["location"] == path), None)
    if found is None:  # raw image: identified by location
        found = old or str(_uuid4())
    elif old is not None and old != found and kind == "hdd":
        raise vbox_error(
            f"Cannot register the hard disk '{path}' {{{found}}} because a hard disk '{path}' with UUID "
            f"{{{old}}} already exists",
            "E_INVALIDARG",
            "0x80070057",
            "VirtualBoxWrap",
            "IVirtualBox",
            "OpenMedium(Bstr(pszMedium).raw(), devTypeRequested, accessType, fForceNewUuidOnOpen, "
            "pMedium2Mount.asOutParam())",
            1191,
            "VBoxManageStorageController.cpp",
        )
    media[found] = {"location": path, "kind": kind}
    return found


def cmd_closemedium(state, args):
    a = Args("closemedium", args)
    first = a.next("medium")
    if first in ("disk", "dvd", "floppy"):
        first = a.next("medium")
    delete = False
    while a.more():
        opt = a.next()
        if opt == "--delete":
            delete = True
        else:
            raise usage("closemedium", f"Unknown option: {opt}")
    path = str(Path(first).absolute())
    for m in state.machines.values():
        for slots in m["attachments"].values():
            if any(att["medium"] == path for att in slots.values()):
                raise vbox_error(
                    f"Medium '{path}' cannot be closed because it is still attached to 1 virtual machines",
                    "VBOX_E_OBJECT_IN_USE",
                    "0x80bb000c",
                    "MediumWrap",
                    "IMedium",
                    "Close()",
                    1700,
                    "VBoxManageDisk.cpp",
                )
    media = state.data.setdefault("media", {})
    known = [u for u, e in media.items() if e["location"] == path or u == first]
    if not known and not Path(path).exists():
        raise vbox_error(
            f"Could not find file for the medium '{path}' (VERR_FILE_NOT_FOUND)",
            "VBOX_E_FILE_ERROR",
            "0x80bb0004",
            "MediumWrap",
            "IMedium",
            "OpenMedium(...)",
            1650,
            "VBoxManageDisk.cpp",
        )
    for u in known:
        del media[u]
    if delete:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return ""


def cmd_showmediuminfo(state, args):
    """``showmediuminfo [disk|dvd|floppy] <uuid|filename>`` (VBoxManageDisk.cpp showMediumInfo).

    The first lines (``UUID:``, ``Parent UUID:``, ``State:``, ``Type:``, ``Location:``, ``Storage
    format:``) follow the source's order. GUESS: the exact column padding, and that showing an
    unregistered file does not leave it in the media registry (the fake never registers it).
    """
    a = Args("showmediuminfo", args)
    first = a.next("medium")
    kind = "hdd"
    if first in ("disk", "dvd", "floppy"):
        kind = {"disk": "hdd", "dvd": "dvddrive", "floppy": "floppy"}[first]
        first = a.next("medium")
    if a.more():
        raise usage("showmediuminfo", f"Unknown option: {a.next()}")
    media = state.data.setdefault("media", {})
    path = str(Path(first).absolute())
    found = first if first in media else None
    found = found or next((u for u, e in media.items() if e["location"] == path), None)
    if found is None and Path(path).exists():
        found = file_uuid(path) or str(_uuid4())  # opened for the call only
    if found is None:
        raise vbox_error(
            f"Could not find file for the medium '{path}' (VERR_FILE_NOT_FOUND)",
            "VBOX_E_FILE_ERROR",
            "0x80bb0004",
            "MediumWrap",
            "IMedium",
            "OpenMedium(...)",
            1650,
            "VBoxManageDisk.cpp",
        )
    location = media.get(found, {}).get("location", path)
    fmt = "VMDK" if location.endswith(".vmdk") else "RAW"
    return (
        f"UUID:           {found}\n"
        "Parent UUID:    base\n"
        "State:          created\n"
        f"Type:           {'normal (base)' if kind == 'hdd' else 'readonly'}\n"
        f"Location:       {location}\n"
        f"Storage format: {fmt}\n"
    )


def cmd_convertfromraw(state, args):
    a = Args("convertfromraw", args)
    positional = []
    fmt = "VDI"
    while a.more():
        opt = a.next()
        if opt == "--format":
            fmt = a.next(opt)
            if fmt not in ("VDI", "VMDK", "VHD"):
                raise usage("convertfromraw", f"Invalid --format argument '{fmt}'")
        elif opt in ("--variant", "--uuid"):
            a.next(opt)
        elif opt.startswith("-"):
            raise usage("convertfromraw", f"Unknown option: {opt}")
        else:
            positional.append(opt)
    if not positional or positional[0] != "stdin":
        raise usage("convertfromraw", "this fake only implements: convertfromraw stdin OUT BYTES")
    if len(positional) != 3:
        raise usage("convertfromraw", "Incorrect number of parameters")
    out = Path(positional[1]).absolute()
    try:
        size = int(positional[2])
    except ValueError:
        raise usage("convertfromraw", f"Invalid size '{positional[2]}'") from None
    stdout = f'Converting from raw image file="stdin" to file="{out}"...\n'
    if out.exists():
        raise Fail(
            f'{PROG}: error: Cannot create the disk image "{out}": VERR_ALREADY_EXISTS\n', stdout=stdout
        )
    if not out.parent.is_dir():
        raise Fail(
            f'{PROG}: error: Cannot create the disk image "{out}": VERR_PATH_NOT_FOUND\n', stdout=stdout
        )
    stdout += f"Creating dynamic image with size {size} bytes ({(size + (1 << 20) - 1) >> 20}MB)...\n"
    stream = sys.stdin.buffer
    with contextlib.suppress(AttributeError, OSError):
        # Fewer, larger reads of the (1 GiB in the task tests) stream; invisible to b2dkit.
        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
    header = bytearray()
    left = size
    nonzero_tail = False
    buf = bytearray(1 << 20)
    zeros = bytes(len(buf))
    view = memoryview(buf)
    # Speed: buf is all zeros before every read (while nothing non-zero has been seen), so a
    # read of n bytes is all zeros exactly when buf == zeros, one memcmp; counting the zeros
    # (the old way) cost ~1 s of CPU per GiB.
    while left:
        n = stream.readinto(view[: min(left, len(buf))])
        if not n:
            # The real read loop stops at EOF and writes a full-size image anyway, exit 0
            # (vv#3 for 7.x; that 6.1's loop is the same is a guess). Only the metadata tells.
            break
        if len(header) < HEADER_KEEP:
            take = min(n, HEADER_KEEP - len(header))
            header += view[:take]
            view[:take] = zeros[:take]  # the header may hold anything; the rest must be zeros
        if not nonzero_tail and buf != zeros:
            nonzero_tail = True
        left -= n
    # VirtualBox stops reading at BYTES and never looks further; the fake peeks one byte only to
    # record it (docker-machine: on Windows a mismatch makes VBoxManage.exe fail, so b2dkit must
    # write exactly BYTES: tests assert "received" and "extra").
    extra = bool(stream.read(1)) if not left else False
    meta = {
        "format": fmt,
        "size": size,
        "uuid": str(_uuid4()),
        "nonzero_after_header": nonzero_tail,
        "received": size - left,
        "extra": extra,
    }
    out.write_bytes(b"# fakevbox VMDK\n" + json.dumps(meta).encode() + b"\n" + bytes(header))
    return stdout


def cmd_startvm(state, args):
    a = Args("startvm", args)
    vm = a.next("VM name")
    while a.more():
        opt = a.next()
        if opt == "--type":
            kind = a.next(opt)
            if kind not in ("gui", "headless", "sdl", "separate"):
                raise usage("startvm", f"Invalid session type '{kind}'")
        else:
            raise usage("startvm", f"Unknown option: {opt}")
    m = state.find(vm, "VBoxManageMisc.cpp")
    if m["state"] in MEMORY_STATES_LOCKED:
        raise vbox_error(
            f"The machine '{m['name']}' is already locked by a session (or being locked or unlocked)",
            "VBOX_E_INVALID_OBJECT_STATE",
            "0x80bb0007",
            "MachineWrap",
            "IMachine",
            "LaunchVMProcess(a->session, sessionType.raw(), ComSafeArrayAsInParam(aBstrEnv), "
            "progress.asOutParam())",
            881,
            "VBoxManageMisc.cpp",
        )
    for slots in m["attachments"].values():
        for att in slots.values():
            if att["medium"] and not Path(att["medium"]).exists():
                raise Fail(
                    f'Waiting for VM "{m["name"]}" to power on...\n'
                    f"{PROG}: error: Could not open the medium '{att['medium']}'.\n"
                    f"{PROG}: error: VD: error VERR_FILE_NOT_FOUND opening image file '{att['medium']}' "
                    "(VERR_FILE_NOT_FOUND)\n"
                )
    waiting = f'Waiting for VM "{m["name"]}" to power on...\n'
    failed = write_vbox_log(m)
    if failed and V.libslirp:
        # DrvNATlibslirp.cpp: a redirect that cannot bind fails the power-up with VMSetError;
        # VBoxManage prints it like other power-up errors (the exact "Details:" line is a guess,
        # modelled on the VERR_VMX_NO_VMX power-up failure).
        rule = failed[0]
        raise Fail(
            f"{PROG}: error: NAT#0: configuration error: failed to set up redirection of "
            f"{rule['host_port']} to {rule['guest_port']}. Probably a conflict with existing services "
            "or other rules (VERR_NAT_REDIR_SETUP).\n"
            f"{PROG}: error: Details: code NS_ERROR_FAILURE (0x80004005), component ConsoleWrap, "
            "interface IConsole\n",
            stdout=waiting,
        )
    fault = take_fault(state, "startvm", ("started-exit1", "guru"))
    set_state(m, "gurumeditation" if fault == "guru" else "running")
    m.pop("acpi_off_at", None)
    out = waiting + f'VM "{m["name"]}" has been successfully started.\n'
    if fault == "started-exit1":
        # "Some systems return an exit code 1 for some reason" (Vagrant version_5_0.rb start)
        raise Fail("", stdout=out, commit=True)
    return out


def write_vbox_log(m):
    """Real VirtualBox rotates VBox.log at each start and logs NAT redirects it cannot bind.

    Returns the rules whose host port could not be bound.
    """
    logs = Path(m["cfg_file"]).parent / "Logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / "VBox.log"
    for n in (2, 1):
        older = logs / f"VBox.log.{n}"
        if older.exists():
            older.replace(logs / f"VBox.log.{n + 1}")
    if log.exists():
        log.replace(logs / "VBox.log.1")
    lines = [f"00:00:00.000000 VirtualBox VM {V.text} (fakevbox)\n"]
    lines.append(f"00:00:00.000100 Log opened {_utcnow().isoformat()}Z\n")
    failed = []
    for nic in m["nics"].values():
        if nic["type"] != "nat":
            continue
        for rule in nic["rules"].values():
            line, error = redirect_line(rule)
            lines.append(line)
            if error:
                failed.append(rule)
    log.write_text("".join(lines))
    return failed


def redirect_line(rule):
    """(VBox.log line, bind error or None) for one redirect, in the engine's own words.

    Old slirp: ``NAT: Failed to redirect TCP 127.0.0.1:P -> 0.0.0.0:G (strerror)`` (LogRel in the
    slirp sources; the success line "NAT: Set redirect" is a guess: the reference saw it
    truncated). libslirp: ``Port forward modify FAIL! Details: ...`` (DrvNATlibslirp.cpp
    LogRelFunc; the function-name prefix and the silence on success are guesses).
    """
    host_ip = rule["host_ip"] or "0.0.0.0"
    guest_ip = rule["guest_ip"] or "0.0.0.0"
    error = bind_error(host_ip, rule["host_port"], rule["proto"])
    if V.libslirp:
        if not error:
            return "", None
        return (
            "00:00:00.500000 drvNATNotifyApplyPortForwardCommand: Port forward modify FAIL! Details: "
            f"fRemove=0, fUdp={int(rule['proto'] == 'udp')}, pszHostIp={rule['host_ip']}, "
            f"u16HostPort={rule['host_port']}, pszGuestIp={rule['guest_ip']}, "
            f"u16GuestPort={rule['guest_port']}\n",
            error,
        )
    arrow = f"{rule['proto'].upper()} {host_ip}:{rule['host_port']} -> {guest_ip}:{rule['guest_port']}"
    if error:
        return f"00:00:00.500000 NAT: Failed to redirect {arrow} ({error})\n", error
    return f"00:00:00.500000 NAT: Set redirect {arrow}\n", None


def bind_error(host_ip, port, proto):
    """The engine's own bind: a TCP listener sets SO_REUSEADDR first (slirp ``solisten`` in
    src/VBox/Devices/Network/slirp/socket.c; libslirp's ``tcp_listen`` does the same), so
    connections in TIME_WAIT on the port do not stop a redirect, only a live listener does.
    UDP binds plainly (slirp ``udp_listen`` sets the option only after its bind)."""
    import socket

    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        if proto == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host_ip, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def cmd_controlvm(state, args):
    a = Args("controlvm", args)
    vm = a.next("VM name")
    action = a.next("action")
    m = state.find(vm, "VBoxManageControlVM.cpp")
    src = "VBoxManageControlVM.cpp"
    known = ("poweroff", "acpipowerbutton", "pause", "resume", "reset", "savestate")
    if not (action in known or (action.startswith("natpf") and action[5:].isdigit())):
        raise usage("controlvm", f"Invalid parameter '{action}'")
    if m["state"] not in ("running", "paused", "gurumeditation"):
        raise not_running(m["name"])
    if m["state"] == "gurumeditation" and action not in ("poweroff", "acpipowerbutton"):
        # only a power-off clears a guru meditation (vv#9)
        raise Fail(f"{PROG}: error: Invalid machine state: Stuck\n")  # GUESS: the wording
    if action == "poweroff":
        set_state(m, "poweroff")
        m.pop("acpi_off_at", None)
        return "0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%\n"
    if action == "acpipowerbutton":
        if m["state"] == "gurumeditation":
            # Console::PowerButton wants a running VM (GUESS: the wording of this refusal)
            raise Fail(f"{PROG}: error: Invalid machine state: Stuck "
                       "(must be Running, Teleporting or LiveSnapshotting)\n")
        if m["state"] != "running":
            raise Fail(f"{PROG}: error: The virtual machine is not running\n")
        if os.environ.get("FAKEVBOX_ACPI_IGNORE") != "1":
            delay = float(os.environ.get("FAKEVBOX_ACPI_DELAY", "0"))
            if delay <= 0:
                set_state(m, "poweroff")
            else:
                m["acpi_off_at"] = time.time() + delay
        return ""
    if action == "pause":
        set_state(m, "paused")
        return ""
    if action == "resume":
        set_state(m, "running")
        return ""
    if action == "savestate":
        set_state(m, "saved")
        return "0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%\n"
    if action == "reset":
        return ""
    nic = m["nics"][_nic(action[5:])]
    value = a.next("rule")
    if value == "delete":
        name = a.next("rule name")
        if name not in nic["rules"]:
            raise rule_unknown(src)
        del nic["rules"][name]
    else:
        name, rule = parse_rule("controlvm", value, src)
        add_rule(nic, name, rule, src)
        # live: the running VM's NAT engine tries to bind now. Either engine only logs a failure
        # and VBoxManage exits 0 (libslirp: NATEngine::addRedirect ignores the result, vv#5).
        # Real VirtualBox's NAT then keeps the host port bound while the rule exists (so a
        # running VM's rules make their ports busy); the fake, a process per call, closes it
        # again at once: a test that needs a running VM's port held binds it itself.
        log = Path(m["cfg_file"]).parent / "Logs" / "VBox.log"
        with open(log, "a") as fh:
            fh.write(redirect_line(rule)[0])
    if a.more():
        raise usage("controlvm", f"Too many parameters: {a.peek()}")
    save_settings(m)
    return ""


def cmd_unregistervm(state, args):
    a = Args("unregistervm", args)
    vm = a.next("VM name")
    delete = delete_all = False
    while a.more():
        opt = a.next()
        if opt == "--delete":
            delete = True
        elif opt == "--delete-all" and V.delete_all_option:
            delete = delete_all = True  # also DVD/floppy images inside the VM's folder (vv#2)
        else:
            raise usage("unregistervm", f"Unknown option: {opt}")
    m = state.find(vm, "VBoxManageMisc.cpp", inaccessible_ok=True)  # by UUID, a ghost can go
    if m["state"] in MEMORY_STATES_LOCKED:
        raise vbox_error(
            f"Cannot unregister the machine '{m['name']}' while it is locked",
            "VBOX_E_INVALID_OBJECT_STATE",
            "0x80bb0007",
            "MachineWrap",
            "IMachine",
            "Unregister(CleanupMode_DetachAllReturnHardDisksOnly, ComSafeArrayAsOutParam(aMedia))",
            169,
            "VBoxManageMisc.cpp",
        )
    del state.machines[next(k for k, v in state.machines.items() if v is m)]
    if delete:
        # --delete removes attached hard disks, saved state, the .vbox, logs and the then-empty
        # folder; DVD images stay (reference §4.1).
        media = state.data.setdefault("media", {})
        for slots in m["attachments"].values():
            for att in slots.values():
                inside = att["medium"] and Path(att["medium"]).parent == Path(m["cfg_file"]).parent
                if att["medium"] and (att["type"] == "hdd" or (delete_all and inside)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(att["medium"])
                    media.pop(att["uuid"], None)  # deleted with the VM, so closed too
        cfg = Path(m["cfg_file"])
        with contextlib.suppress(FileNotFoundError):
            cfg.unlink()
        for extra in (cfg.with_suffix(".vbox-prev"),):
            with contextlib.suppress(FileNotFoundError):
                extra.unlink()
        _rmtree(cfg.parent / "Logs", ignore_errors=True)
        with contextlib.suppress(OSError):
            cfg.parent.rmdir()
        return "0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%\n"
    return ""


COMMANDS = {
    "--version": cmd_version,
    "-v": cmd_version,
    "list": cmd_list,
    "createvm": cmd_createvm,
    "registervm": cmd_registervm,
    "showvminfo": cmd_showvminfo,
    "modifyvm": cmd_modifyvm,
    "storagectl": cmd_storagectl,
    "storageattach": cmd_storageattach,
    "closemedium": cmd_closemedium,
    "showmediuminfo": cmd_showmediuminfo,
    "convertfromraw": cmd_convertfromraw,
    "startvm": cmd_startvm,
    "controlvm": cmd_controlvm,
    "unregistervm": cmd_unregistervm,
}


def take_fault(state, cmd, kinds):
    """FAKEVBOX_FAULTS=cmd=kind*N: the kind while the first N calls of cmd last, else None."""
    spec = os.environ.get("FAKEVBOX_FAULTS", "")
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, rest = item.partition("=")
        kind, _, count = rest.partition("*")
        if name != cmd or kind not in kinds:
            continue
        used = state.data.setdefault("faults", {}).get(item, 0)
        if used < int(count or 1):
            state.data["faults"][item] = used + 1
            return kind
    return None


def injected_fault(state, cmd):
    """The transient failures of FAKEVBOX_FAULTS, raised before the command runs."""
    kind = take_fault(state, cmd, ("exit0-error", *TRANSIENT))
    if kind == "exit0-error":
        return Fail("VBoxManage: error: VT-x is not available (VERR_VMX_NO_VMX)\n", code=0)
    return Fail(TRANSIENT[kind]) if kind else None


def main(argv=None):
    global V
    V = Version.from_env()
    argv = sys.argv[1:] if argv is None else argv
    home = os.environ.get("FAKEVBOX_HOME")
    if not home:
        sys.stderr.write(f"{PROG}: error: fakevbox: FAKEVBOX_HOME is not set\n")
        return 3
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "calls.log", "a") as log:
        log.write(json.dumps(argv) + "\n")
    if not argv:
        sys.stdout.write("Oracle VM VirtualBox Command Line Management Interface (fakevbox)\n\nUsage: ...\n")
        return SYNTAX
    cmd, rest = argv[0], argv[1:]
    handler = COMMANDS.get(cmd)
    if handler is None:
        sys.stderr.write(f"{PROG}: error: Invalid command '{cmd}'\n\nUsage: VBoxManage <command> ...\n")
        return SYNTAX
    state = State(home)
    try:
        with state.locked():
            _ = state.svc_lang  # the first call "starts VBoxSVC" in the caller's language
            fault = injected_fault(state, cmd)
        if fault:
            raise fault
        if cmd == "convertfromraw":
            out = handler(state, rest)  # touches no state; do not hold the lock while streaming
        else:
            # A failing command raises inside the block, so nothing it half-changed is saved.
            with state.locked():
                out = handler(state, rest)
    except Fail as fail:
        write(sys.stdout, speak(fail.stdout, state))
        write(sys.stderr, speak(fail.stderr, state))
        return fail.code
    write(sys.stdout, speak(out, state))
    return 0


def write(stream, text):
    codeset = os.environ.get("FAKEVBOX_CODESET") or "utf-8"
    stream.flush()
    stream.buffer.write(text.encode(codeset, errors="replace"))
    stream.buffer.flush()


def speak(text, state):
    """English, or the caller's and the service's languages on a VirtualBox that translates."""
    if not V.translates or not text:
        return text
    return l10n.translate(text, l10n.process_language(), state.svc_lang)


if __name__ == "__main__":
    sys.exit(main())
