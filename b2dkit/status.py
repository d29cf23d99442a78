"""What ``vm.status``, ``vm.list``, ``vm.mounts`` and ``vm.env`` report, gathered once and rendered.

Everything is read live (hypervisor, guest clock, mount table); nothing here is cached.
"""

import shlex
from typing import Dict, List, Optional, Sequence, Union

from . import autoports, lifecycle, machines, paths
from .errors import B2dkitError, InputError
from .forwards import Forward, connect_address, docker_forward, ssh_forward
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
        "forwards": autoports.forward_rows(machine.name, snap.forwards),
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
    info["watcher"] = _watcher(machine)  # after the drift check: that may have repaired something
    auto = autoports.report(machine)
    if auto is not None:
        info["auto_ports"] = auto
    rule = docker_forward(snap.forwards)
    info["docker"] = None  # no Docker set up for this VM
    if rule is not None and machine.docker is not False:
        from . import dockerd

        if snap.state != VMState.RUNNING:
            info["docker"] = {"reachable": False, "error": f"the VM is {snap.state}", "log": dockerd.GUEST_LOG}
        else:
            daemon = dockerd.summary(machine.name, rule)
            if not daemon["reachable"] and drift:
                daemon["daemon"] = _daemon(machine, snap.forwards)
            info["docker"] = daemon
    return info


def _daemon(machine: Machine, rules: Sequence[Forward]) -> str:
    """Why the daemon did not answer, from the guest: its dockerd runs, is starting, or is not running."""
    from . import dockerd

    ssh = ssh_forward(rules)
    if not ssh:
        return "unknown"
    try:
        with lifecycle.connect(machine, endpoint=connect_address(ssh), by="vm.status") as session:
            return dockerd.daemon_state(session)
    except B2dkitError as exc:
        return f"unknown ({exc})"


def _watcher(machine: Machine) -> dict:
    from . import watcher

    return watcher.status(machine.name)


def render_watcher(w: dict) -> List[str]:
    state = f"running (pid {w['pid']})" if w.get("running") else "not running"
    lines = [f"watcher:    {state}, log {w['log']}"]
    relays = w.get("ipv6_relays") or {}
    if relays.get("active"):
        lines.append("  also on [::1]: " + ", ".join(str(p) for p in relays["active"]))
    for port, why in sorted((relays.get("failed") or {}).items()):
        lines.append(f"  not on [::1]:{port}: {why}")
    last = w.get("last_repair")
    if last:
        steps = "; ".join(f"{s['what']} in {s['seconds']:.2f} s" + ("" if s.get("ok", True) else " (failed)")
                          for s in last.get("steps", [])) or "nothing to repair"  # fmt: skip
        lines.append(f"  last repair {last.get('at')} by {last.get('by')} ({last.get('reason')}): {steps}")
    return lines


def _drift(machine: Machine, rules: Sequence[Forward]) -> Union[float, str]:
    """Guest minus host clock in seconds, or why it is unknown."""
    from . import guest

    ssh = ssh_forward(rules)
    if not ssh:
        return "unknown (no forward to the guest's SSH port)"
    try:
        with lifecycle.connect(machine, endpoint=connect_address(ssh), by="vm.status") as session:
            return round(guest.clock_drift(session), 2)
    except B2dkitError as exc:
        return f"unknown ({exc})"


def render(info: dict) -> str:
    lines = [
        f"VM:         {info['name']}{' (active)' if info['active'] else ''}",
        f"provider:   {info['provider']}",
        f"state:      {info['state']}" + (f" ({info['halted']})" if info.get("halted") else ""),
        f"boot codes: {' '.join(info['boot_codes']) or '-'}",
        f"ISO:        {info['iso']}",
        f"disk:       {info['disk'] or '-'}",
    ]
    drift = info.get("clock_drift_seconds")
    if drift is not None:
        lines.append(f"clock:      guest - host = {drift} s" if isinstance(drift, (int, float)) else f"clock: {drift}")
    if info.get("docker"):
        lines.append("docker:     " + render_docker(info["docker"], info["name"]))
    lines.append("forwards:" + ("" if info["forwards"] else " none"))
    for f in info["forwards"]:
        auto = f"; auto: container {f['auto']['container'] or 'unknown'}" if f.get("auto") else ""
        lines.append(f"  {f['host_ip']}:{f['host_port']} -> {f['guest_port']}/{f['proto']}  ({f['name']}{auto})")
    lines += autoports.render(info.get("auto_ports"))
    lines.append("mounts:" + ("" if info["mounts"] else " none"))
    for m in info["mounts"]:
        lines.append("  " + render_mount(m))
    if info.get("watcher"):
        lines += render_watcher(info["watcher"])
    if info.get("log"):
        lines.append(f"log:        {info['log']}")
    return "\n".join(lines)


def render_docker(docker: dict, name: str) -> str:
    """The daemon in one line: what answers, or why not and where the guest's log is."""
    if docker["reachable"]:
        return (f"{docker['version']} on {docker['host']} (TLS): {docker['images']} images, "
                f"{docker['containers']} containers ({docker['running']} running)")
    line = f"not reachable{' on ' + docker['host'] if docker.get('host') else ''} ({docker['error']})"
    daemon = docker.get("daemon")
    if daemon == "not running":
        line += (f": the daemon is not running in the guest (its log: {docker['log']}); "
                 f"`b2dkit vm.docker --restart --name {name}` starts it")
    elif daemon:
        line += f": the guest's dockerd is {daemon} (its log: {docker['log']})"
    return line


def list_all() -> List[dict]:
    rows = []
    try:
        active = machines.active_name()
    except B2dkitError:  # a damaged active-VM file must not hide the list
        active = None
    for m in machines.all_machines():
        try:
            state = str(lifecycle.provider_for(m).state())
        except B2dkitError as exc:
            state = f"unknown ({exc})"
        rows.append({"name": m.name, "provider": m.provider, "state": state, "active": m.name == active})
    for name, why in machines.broken():
        rows.append({"name": name, "provider": "?", "state": f"broken: {why}", "active": name == active})
    from .hypervisors.qemu.provider import running_qemus

    listed = {r["name"] for r in rows}
    for name, (pid, _rules) in running_qemus().items():
        if name not in listed:  # its folder (and record) is gone, its QEMU is not
            rows.append({"name": name, "provider": "qemu", "active": False,
                         "state": f"orphaned: QEMU pid {pid} runs without its VM folder; "
                                  f"stop it with `b2dkit vm.stop --name={name}`"})
    return sorted(rows, key=lambda r: r["name"])


def mounts(machine: Machine) -> List[dict]:
    from . import sshfs

    try:
        live = {str(m.local_dir): m for m in sshfs.list_mounts()}
    except B2dkitError:
        live = {}
    mine = {r.local_dir: r for r in machines.made_mounts(machine.name)}
    rows = []
    for m in machine.mounts:
        local = lifecycle.mount_dir(m.host)
        cur = live.get(local)
        row: dict = {"guest": m.guest, "host": local, "status": "not mounted", "cache": m.cache}
        if cur is not None and local in mine and mine[local].source == cur.source:
            row["status"] = cur.state
            if mine[local].cache != m.cache:  # sshfs takes its caching at mount: the profile's waits
                row["mounted_cache"] = mine[local].cache
        elif cur is not None:  # the dir holds a mount, but not this VM's: never report it as ours
            owner = machines.mount_owner(local, cur.source)
            row.update(status="another mount", owner=owner.vm if owner else None, source=cur.source)
        rows.append(row)
    return rows


def render_mount(row: dict) -> str:
    """One line of ``vm.mounts`` and ``vm.status``."""
    return f"{row['guest']} -> {row['host']}: {mount_state(row)}"


def mount_state(row: dict) -> str:
    """A mount's state in words, and what its caching means for seeing the VM's changes."""
    from . import sshfs

    if row["status"] == "another mount":
        owner = row.get("owner")
        return f"mounted by VM {owner!r}" if owner else f"holds another mount ({row['source']})"
    if row.get("mounted_cache"):
        return (f"{row['status']} with cache {row['mounted_cache']}; the profile says {row['cache']}: "
                "`b2dkit vm.mount` remounts it")
    return row["status"] + sshfs.cache_note(row["cache"])


ENV_SHELLS = ("bash", "fish", "powershell", "cmd")  # bash: any POSIX shell (sh, zsh)
ENV_NAMES = ("DOCKER_TLS_VERIFY", "DOCKER_HOST", "DOCKER_CERT_PATH", "DOCKER_MACHINE_NAME")


def docker_vars(machine: Machine, ssh: bool = False, unset: bool = False) -> Dict[str, Optional[str]]:
    """{name: value, or None to unset} for the Docker client, as ``docker-machine env`` sets them.

    TLS through the VM's loopback forward to 2376 with ``<vm dir>/certs`` (what ``vm.start``
    set up); ``ssh`` gives the ``ssh://`` form instead, which needs the VM key in the agent.
    """
    from . import dockerd, tlscerts

    if unset:
        return {name: None for name in ENV_NAMES}
    provider = lifecycle.provider_for(machine)
    if ssh:
        host, port = provider.ssh_endpoint()
        return {"DOCKER_TLS_VERIFY": None, "DOCKER_HOST": f"ssh://docker@{host}:{port}",
                "DOCKER_CERT_PATH": None, "DOCKER_MACHINE_NAME": machine.name}
    rule = docker_forward(provider.forwards())
    certs = dockerd.cert_dir(machine.name)
    if rule is None or not all((certs / n).is_file() for n in tlscerts.CLIENT_FILES):
        raise InputError(
            f"VM {machine.name!r} has no Docker daemon set up yet (no forward to its TLS port 2376, or no "
            f"client certificates in {certs})",
            hint=f"start it with `b2dkit vm.start --name {machine.name}` (b2dkit sets Docker up when the guest "
            "has it), or use `b2dkit vm.env --ssh`",
        )
    host, port = connect_address(rule)
    return {"DOCKER_TLS_VERIFY": "1", "DOCKER_HOST": f"tcp://{host}:{port}", "DOCKER_CERT_PATH": str(certs),
            "DOCKER_MACHINE_NAME": machine.name}


def docker_env(machine: Machine, shell: str = "bash", ssh: bool = False, unset: bool = False) -> List[str]:
    """The lines ``vm.env`` prints for ``shell``, ending with how to apply them (docker-machine's form)."""
    if shell not in ENV_SHELLS:
        raise InputError(f"--shell: unknown shell {shell!r}: use one of {', '.join(ENV_SHELLS)}")
    values = docker_vars(machine, ssh=ssh, unset=unset)
    lines = [_env_line(shell, name, value) for name, value in values.items()]
    if ssh and not unset:
        lines.append(_comment(shell, "the ssh:// form authenticates with the VM key through your agent: "
                                     f"ssh-add {lifecycle.key_path(machine.name)}"))
    command = f"b2dkit vm.env --name {machine.name}" + ("" if shell == "bash" else f" --shell {shell}") \
        + (" --ssh" if ssh else "") + (" --unset" if unset else "")
    lines.append(_comment(shell, "Run this command to configure your shell:"))
    lines.append(_comment(shell, {
        "bash": f'eval "$({command})"',
        "fish": f"eval ({command})",
        "powershell": f"& {command} | Invoke-Expression",
        "cmd": f"@FOR /f \"tokens=*\" %i IN ('{command}') DO @%i",
    }[shell]))
    return lines


def _env_line(shell: str, name: str, value: Optional[str]) -> str:
    if shell == "bash":
        return f"unset {name}" if value is None else f"export {name}={shlex.quote(value)}"
    if shell == "fish":
        if value is None:
            return f"set -e {name};"
        return f"set -gx {name} '" + value.replace("\\", "\\\\").replace("'", "\\'") + "';"
    if shell == "powershell":
        if value is None:
            return f"Remove-Item Env:\\{name} -ErrorAction SilentlyContinue"
        return f"$Env:{name} = '" + value.replace("'", "''") + "'"
    return f"SET {name}=" + ("" if value is None else value)  # cmd takes the rest of the line as it is


def _comment(shell: str, text: str) -> str:
    return ("REM " if shell == "cmd" else "# ") + text
