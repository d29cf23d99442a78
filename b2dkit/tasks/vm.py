"""``vm.*``: create, run and reach the dev VM. Thin: arguments in, library call, lines out."""

import sys
from typing import Optional

from invoke import Context

from .. import forwards as forwards_
from .. import autoports, jsonout, lifecycle, machines, profile as profiles, status as vmstatus
from ..errors import B2dkitError, InputError, VMNotFound
from ._base import print_json, say, task

NAME_HELP = "VM to act on (default: the active VM, set by the last vm.create/onboard)"
PROFILE_HELP = "profile name in profiles/ or a path to a YAML file"


def _machine(name: Optional[str]) -> machines.Machine:
    return machines.resolve(name)


@task(
    help={
        "profile": PROFILE_HELP,
        "provider": "override the profile's hypervisor: virtualbox or qemu",
        "name": "override the profile's VM name",
        "iso": "use this local boot2docker.iso instead of the profile's download",
        "no_start": "create (or converge) the VM but do not boot it",
    },
    auto_shortflags=False,
)
def create(c: Context, profile: str = "default", provider: Optional[str] = None, name: Optional[str] = None,
           iso: Optional[str] = None, no_start: bool = False) -> lifecycle.Outcome:
    """Create the VM from a profile (idempotent), then boot it, wait for SSH and set it up."""
    prof = profiles.load(profile, provider=provider, name=name)
    out = lifecycle.create(prof, iso_path=iso, start_vm=not no_start, log=say)
    if not no_start:
        say(f"{prof.name} is ready")
    else:
        say(f"{prof.name} is created and running (--no-start leaves a running VM as it is)" if out.running
            else f"{prof.name} created (not started)")
    return out


@task(help={"name": NAME_HELP}, auto_shortflags=False)
def start(c: Context, name: Optional[str] = None) -> None:
    """Boot the VM headless, wait for SSH, create persistent dirs, sync the clock, mount folders."""
    lifecycle.start(_machine(name), log=say)


@task(help={"name": NAME_HELP,
            "timeout": "seconds (> 0, default 30) to wait for a clean ACPI shutdown before power-off"},
      auto_shortflags=False)
def stop(c: Context, name: Optional[str] = None, timeout: Optional[str] = None) -> None:
    """Unmount the VM's folders, sync the guest's disks, then shut it down (ACPI; power-off after a timeout)."""
    seconds = lifecycle.stop_timeout(timeout)  # checked before the VM is looked up
    out = lifecycle.stop(lifecycle.stop_target(name), log=say, timeout=seconds)
    for line in out.kept + [f"warning: {w}" for w in out.warnings]:
        say(line)


@task(
    help={
        "name": NAME_HELP,
        "purge": "also delete the persistent disk (/mnt/sda1) and the VM's keys: data is lost",
        "yes": "do not ask for confirmation",
    },
    auto_shortflags=False,
)
def destroy(c: Context, name: Optional[str] = None, purge: bool = False, yes: bool = False) -> None:
    """Remove the VM; its persistent disk is kept unless --purge (also a disk kept earlier)."""
    machine: Optional[machines.Machine]
    try:
        machine = _machine(name)
    except VMNotFound:
        machine = lifecycle.kept_disk(name) if purge and name else None
        if machine is None:
            raise
    what = "and DELETE its persistent disk" if purge else "(its persistent disk is kept)"
    if not yes:
        if not sys.stdin.isatty():
            raise InputError(f"refusing to destroy VM {machine.name!r} without confirmation; pass --yes")
        answer = input(f"Destroy VM {machine.name} {what}? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            say("nothing destroyed")
            return
    lifecycle.destroy(machine, purge=purge, log=say)


@task(help={"name": NAME_HELP, "json": "machine-readable output"}, auto_shortflags=False)
def status(c: Context, name: Optional[str] = None, json: bool = False) -> None:
    """Show state, forwards, disk, ISO, boot codes, clock drift and mounts of the VM."""
    info = vmstatus.collect(_machine(name))
    if json:
        print_json(jsonout.vm_status(info))
    else:
        say(vmstatus.render(info))


@task(help={"json": "machine-readable output"}, auto_shortflags=False)
def list(c: Context, json: bool = False) -> None:  # noqa: A001 - the task is called vm.list
    """List b2dkit VMs, their provider and state; * marks the active one."""
    rows = vmstatus.list_all()
    if json:
        print_json(jsonout.vm_list(rows))
        return
    if not rows:
        say("no b2dkit VMs; create one with `b2dkit vm.create --profile=NAME`")
    for row in rows:
        mark = "*" if row["active"] else " "
        say(f"{mark} {row['name']:<20} {row['provider']:<11} {row['state']}")


@task(
    help={
        "spec": "PORT, HOST:GUEST or HOST:GUEST/udp (e.g. 8000, 8080:80, 5353:53/udp)",
        "name": NAME_HELP,
        "host_ip": "host address to bind (default 127.0.0.1; 0.0.0.0 exposes it to your network)",
        "auto_correct": "if the host port is taken, pick a free one (2200-2250) and say which",
        "force": "allow exposing the Docker daemon ports 2375/2376 beyond loopback",
    },
    auto_shortflags=False,
)
def forward(c: Context, spec: str, name: Optional[str] = None, host_ip: str = "127.0.0.1", auto_correct: bool = False,
            force: bool = False) -> None:
    """Forward a host port to the VM, live if it is running (loopback by default)."""
    rule = forwards_.parse_spec(spec, host_ip=host_ip)  # bad input fails before anything is looked up
    forwards_.check_exposure(rule, force=force)
    lifecycle.forward(_machine(name), rule, auto_correct=auto_correct, force=force, log=say)


@task(help={"spec": "host PORT (or PORT/udp) of the forward to remove", "name": NAME_HELP,
            "force": "also remove the VM's SSH route (b2dkit then cannot reach the guest)"},
      auto_shortflags=False)
def unforward(c: Context, spec: str, name: Optional[str] = None, force: bool = False) -> None:
    """Remove a port forward, live if the VM is running (an auto forward stays off for its container)."""
    lifecycle.unforward(_machine(name), lifecycle.unforward_name(spec), force=force, log=say)


@task(help={"name": NAME_HELP, "json": "machine-readable output"}, auto_shortflags=False)
def forwards(c: Context, name: Optional[str] = None, json: bool = False) -> None:
    """List the VM's port forwards as the hypervisor has them now."""
    machine = _machine(name)
    rows = autoports.forward_rows(machine.name, lifecycle.provider_for(machine).forwards())
    auto = autoports.report(machine)
    if json:
        print_json(jsonout.vm_forwards(machine.name, rows, auto))
        return
    for line in [autoports.rule_line(row) for row in rows] + autoports.render(auto):
        say(line)


@task(help={"name": NAME_HELP, "command": "run this command instead of an interactive shell"})
def ssh(c: Context, name: Optional[str] = None, command: Optional[str] = None) -> None:
    """Open a shell in the VM (or run -c CMD and pass its exit code through)."""
    code = lifecycle.shell(_machine(name), command=command)
    if code:
        from invoke import Exit

        raise Exit(code=code)


@task(name="ssh-config", help={"name": NAME_HELP, "all": "a block for every b2dkit VM"}, auto_shortflags=False)
def ssh_config(c: Context, name: Optional[str] = None, all: bool = False) -> None:  # noqa: A002 - the flag is --all
    """Print an OpenSSH Host block for the VM: ssh -F <(b2dkit vm.ssh-config) b2dkit-NAME."""
    from .. import sshconfig

    chosen = machines.all_machines() if all else [_machine(name)]
    if not chosen:
        say("# no b2dkit VMs; create one with `b2dkit vm.create --profile=NAME`")
    for index, machine in enumerate(chosen):
        if index:
            say()
        try:
            host, port = lifecycle.provider_for(machine).ssh_endpoint()
        except B2dkitError as exc:
            if not all:
                raise
            say(f"# {machine.name}: {exc}")  # one broken VM must not hide the others
            continue
        for line in sshconfig.host_block(machine.name, host, port, lifecycle.key_path(machine.name),
                                         lifecycle.known_hosts_path(machine.name)):
            say(line)


@task(
    help={
        "name": NAME_HELP,
        "shell": "bash (any POSIX shell: sh, zsh), fish, powershell or cmd",
        "unset": "print the lines that undo it",
        "ssh": "DOCKER_HOST=ssh://docker@… instead of TLS (needs the VM key in your ssh agent)",
    },
    auto_shortflags=False,
)
def env(c: Context, name: Optional[str] = None, shell: str = "bash", unset: bool = False, ssh: bool = False) -> None:
    """Print the Docker client's settings for the VM's daemon (TLS): eval "$(b2dkit vm.env)"."""
    for line in vmstatus.docker_env(_machine(name), shell=shell, ssh=ssh, unset=unset):
        say(line)


@task(help={"name": NAME_HELP,
            "restart": "restart the guest's Docker daemon (also one that was killed) and wait until it answers"},
      auto_shortflags=False)
def docker(c: Context, name: Optional[str] = None, restart: bool = False) -> None:
    """Show the VM's Docker daemon in one line; --restart restarts it and waits for /_ping over TLS."""
    machine = _machine(name)
    if restart:
        lifecycle.restart_docker(machine, log=say)
        return
    info = vmstatus.collect(machine)
    if info["docker"] is None:
        raise InputError(f"VM {machine.name!r} has no Docker daemon set up (no forward to its TLS port 2376)",
                         hint=f"`b2dkit vm.start --name {machine.name}` sets it up when the guest has Docker")
    say(vmstatus.render_docker(info["docker"], machine.name))


@task(help={"name": NAME_HELP, "remount": "repair stale mounts (after sleep or a VM reboot)"},
      auto_shortflags=False)
def mount(c: Context, name: Optional[str] = None, remount: bool = False) -> None:
    """Mount the profile's VM folders on the host with sshfs (e.g. /mnt/sda1/dev -> ~/workspace/dev)."""
    out = lifecycle.mount_all(_machine(name), log=say, remount=remount, strict=True)
    for line in out.kept:
        say(line)


@task(help={"name": NAME_HELP}, auto_shortflags=False)
def unmount(c: Context, name: Optional[str] = None) -> None:
    """Unmount the VM's sshfs folders from the host."""
    out = lifecycle.unmount_all(_machine(name), log=say)
    if not out.done:
        say("nothing mounted")


@task(help={"name": NAME_HELP, "json": "machine-readable output"}, auto_shortflags=False)
def mounts(c: Context, name: Optional[str] = None, json: bool = False) -> None:
    """Show each profile mount and whether it is alive, stale or not mounted."""
    machine = _machine(name)
    rows = vmstatus.mounts(machine)
    if json:
        print_json(jsonout.vm_mounts(machine.name, rows))
        return
    if not rows:
        say("no mounts in this VM's profile")
    for row in rows:
        say(vmstatus.render_mount(row))
