"""What ``vm.status``, ``vm.list``, ``vm.mounts`` and ``vm.env`` report, gathered once and rendered.

Everything is read live (hypervisor, guest clock, mount table); nothing here is cached.
"""

from pathlib import Path
from typing import List

from . import lifecycle, machines, paths
from .errors import B2dkitError
from .forwards import DOCKER_PORTS, connect_address, ssh_forward
from .machines import Machine
from .hypervisors.base import VMState


def collect(machine: Machine, drift: bool = True) -> dict:
    provider = lifecycle.provider_for(machine)
    snap = provider.status()
    disk = provider.disk_path()
    info = {
        "name": machine.name,
        "provider": machine.provider,
        "profile": machine.profile,
        "active": machines.active_name() == machine.name,
        "state": str(snap.state),
        "forwards": [f.to_dict() for f in sorted(snap.forwards)],
        "disk": str(disk) if disk else None,
        "iso": str(paths.vm_dir(machine.name) / lifecycle.VM_ISO),
        "boot_codes": machine.boot_codes,
        "persistent_dirs": machine.persistent_dirs,
        "log": str(provider.log_path() or ""),
        "clock_drift_seconds": None,
        "mounts": mounts(machine),
    }
    info.update({k: v for k, v in snap.info.items() if k not in info})
    if drift and snap.state == VMState.RUNNING:
        info["clock_drift_seconds"] = _drift(machine, snap.forwards)
    return info


def _drift(machine, rules):
    from . import guest

    ssh = ssh_forward(rules)
    if not ssh:
        return "unknown (no forward to the guest's SSH port)"
    host, port = connect_address(ssh)
    try:
        with guest.connect(host, port, lifecycle.key_path(machine.name),
                           lifecycle.known_hosts_path(machine.name)) as session:
            return round(guest.clock_drift(session), 2)
    except B2dkitError as exc:
        return f"unknown ({exc})"


def render(info: dict) -> str:
    lines = [
        f"VM:         {info['name']}{' (active)' if info['active'] else ''}",
        f"provider:   {info['provider']}",
        f"state:      {info['state']}",
        f"boot codes: {' '.join(info['boot_codes']) or '-'}",
        f"ISO:        {info['iso']}",
        f"disk:       {info['disk'] or '-'}",
    ]
    drift = info.get("clock_drift_seconds")
    if drift is not None:
        lines.append(f"clock:      guest - host = {drift} s" if isinstance(drift, (int, float)) else f"clock: {drift}")
    lines.append("forwards:" + ("" if info["forwards"] else " none"))
    for f in info["forwards"]:
        lines.append(f"  {f['host_ip']}:{f['host_port']} -> {f['guest_port']}/{f['proto']}  ({f['name']})")
    lines.append("mounts:" + ("" if info["mounts"] else " none"))
    for m in info["mounts"]:
        lines.append(f"  {m['guest']} -> {m['host']}: {m['status']}")
    if info.get("log"):
        lines.append(f"log:        {info['log']}")
    return "\n".join(lines)


def list_all() -> List[dict]:
    rows = []
    active = machines.active_name()
    for m in machines.all_machines():
        try:
            state = str(lifecycle.provider_for(m).state())
        except B2dkitError as exc:
            state = f"unknown ({exc})"
        rows.append({"name": m.name, "provider": m.provider, "state": state, "active": m.name == active})
    return rows


def mounts(machine: Machine) -> List[dict]:
    from . import sshfs

    try:
        live = {str(m.local_dir): m for m in sshfs.list_mounts()}
    except B2dkitError:
        live = {}
    rows = []
    for m in machine.mounts:
        local = str(m.host.expanduser())
        cur = live.get(local)
        status = "not mounted" if cur is None else cur.state
        rows.append({"guest": m.guest, "host": local, "status": status})
    return rows


def docker_env(machine: Machine) -> List[str]:
    """``export`` lines for the Docker client, like ``boot2docker shellinit``."""
    provider = lifecycle.provider_for(machine)
    rules = {f.guest_port: f for f in provider.forwards() if f.proto == "tcp"}
    if 2376 in rules:
        f = rules[2376]
        certs = paths.vm_dir(machine.name) / "certs"
        lines = [
            f"export DOCKER_HOST=tcp://{f.host_ip}:{f.host_port}",
            "export DOCKER_TLS_VERIFY=1",
            f"export DOCKER_CERT_PATH={certs}",
        ]
        if not _certs_ready(machine, provider, certs):
            lines.append("# the VM has no TLS client certificates yet (~docker/.docker/*.pem): start it, make sure")
            lines.append("# its Docker daemon runs with TLS, then run `b2dkit vm.env` again")
        lines.append(f"# run this command to configure your shell: eval \"$(b2dkit vm.env --name {machine.name})\"")
        return lines
    if 2375 in rules:
        f = rules[2375]
        return [
            f"export DOCKER_HOST=tcp://{f.host_ip}:{f.host_port}",
            "unset DOCKER_TLS_VERIFY DOCKER_CERT_PATH",
            f"# run this command to configure your shell: eval \"$(b2dkit vm.env --name {machine.name})\"",
        ]
    host, port = provider.ssh_endpoint()
    key = lifecycle.key_path(machine.name)
    missing = ", ".join(str(p) for p in DOCKER_PORTS)
    return [
        f"export DOCKER_HOST=ssh://docker@{host}:{port}",
        "unset DOCKER_TLS_VERIFY DOCKER_CERT_PATH",
        f"# no forward to the daemon ports ({missing}); the Docker client goes over SSH and needs",
        f"# the VM key in your agent: ssh-add {key}",
    ]


def _certs_ready(machine: Machine, provider, certs: Path) -> bool:
    """The daemon's client certs are on the host, copying them from a running VM if needed."""
    from . import guest

    if all((certs / name).is_file() for name in guest.DOCKER_CERTS):
        return True
    if provider.state() != VMState.RUNNING:
        return False
    try:
        host, port = provider.ssh_endpoint()
        with guest.connect(host, port, lifecycle.key_path(machine.name),
                           lifecycle.known_hosts_path(machine.name)) as session:
            return guest.fetch_docker_certs(session, certs)
    except B2dkitError:
        return False
