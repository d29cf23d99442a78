"""``vm.ssh-config``: the Host block as OpenSSH itself reads it (``ssh -G``), and real logins with it.

The logins go to Debian's dropbear (the guest's sshd) on 127.0.0.1 with a pinned host key;
the QEMU guest is reached the same way in test_e2e.py.
"""
# ruff: noqa: F811  (pytest fixtures imported from sshserver are re-bound as test parameters)

import shutil
import subprocess

import pytest
from sshserver import ssh_keys, ssh_user, sshd, vm  # noqa: F401

from b2dkit import guest, lifecycle, sshconfig
from b2dkit.main import make_program
from fakevbox import install

needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed")


def resolved(config_file, alias):
    """``ssh -G``: what OpenSSH would use for ``alias``, without connecting."""
    out = subprocess.run(["ssh", "-G", "-F", str(config_file), alias], capture_output=True, text=True, check=True)
    values = {}
    for line in out.stdout.splitlines():
        key, _, value = line.partition(" ")
        values.setdefault(key, value)
    return values


def task_output(capsys, *argv):
    capsys.readouterr()
    make_program().run(["b2dkit", *argv], exit=False)
    return capsys.readouterr().out


@needs_ssh
def test_the_block_for_a_virtualbox_vm_is_what_ssh_reads(tmp_path, monkeypatch, capsys, boot2docker_iso):
    install(tmp_path / "fv", monkeypatch)
    iso = tmp_path / "boot2docker.iso"
    shutil.copyfile(boot2docker_iso, iso)
    profile = tmp_path / "small.yaml"
    profile.write_text("extends: default\ndisk: 1024\n")
    make_program().run(["b2dkit", "vm.create", f"--profile={profile}", "--provider=virtualbox", "--name=dev",
                        f"--iso={iso}", "--no-start"], exit=False)
    out = task_output(capsys, "vm.ssh-config")  # the active VM
    assert "Host b2dkit-dev" in out.splitlines()
    assert out.startswith("# [127.0.0.1]:2022 has no pinned host key yet: run `b2dkit vm.start --name=dev`")
    config = tmp_path / "ssh_config"
    config.write_text(out)
    got = resolved(config, "b2dkit-dev")
    assert (got["hostname"], got["port"], got["user"]) == ("127.0.0.1", "2022", "docker")
    assert got["identityfile"] == str(lifecycle.key_path("dev"))
    assert got["userknownhostsfile"] == str(lifecycle.known_hosts_path("dev"))
    assert (got["stricthostkeychecking"], got["identitiesonly"], got["passwordauthentication"]) == (
        "true", "yes", "no")
    assert resolved(config, "elsewhere.example")["hostname"] == "elsewhere.example"  # only our alias
    assert task_output(capsys, "vm.ssh-config", "--name=dev") == out


def test_paths_with_spaces_are_quoted_so_ssh_reads_them_whole(tmp_path):
    folder = tmp_path / "Application Support" / "b2dkit"
    lines = sshconfig.host_block("dev", "127.0.0.1", 2022, folder / "id_ed25519", folder / "known_hosts")
    config = tmp_path / "cfg"
    config.write_text("\n".join(lines) + "\n")
    if shutil.which("ssh") is None:
        pytest.skip("the OpenSSH client is not installed")
    got = resolved(config, "b2dkit-dev")
    assert got["identityfile"] == str(folder / "id_ed25519")
    assert got["userknownhostsfile"] == str(folder / "known_hosts")


@needs_ssh
def test_ssh_with_the_block_logs_in_and_refuses_a_changed_host_key(vm, sshd, ssh_keys, tmp_path):
    guest.connect(vm["host"], vm["port"], vm["key_path"], vm["known_hosts_path"], user=vm["user"]).close()  # pins
    lines = sshconfig.host_block("testvm", vm["host"], vm["port"], vm["key_path"], vm["known_hosts_path"],
                                 user=vm["user"])
    assert not lines[0].startswith("#")  # pinned: no warning
    config = tmp_path / "ssh_config"
    config.write_text("\n".join(lines) + "\n")
    argv = ["ssh", "-F", str(config), "-o", "BatchMode=yes", "b2dkit-testvm"]
    proc = subprocess.run([*argv, "echo", "hello from", "$(id -un)"], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout.strip()) == (0, f"hello from {vm['user']}"), proc.stderr
    assert subprocess.run([*argv, "exit 5"], capture_output=True, timeout=60).returncode == 5
    sshd.restart(ssh_keys["hostkeys"]["b"])  # another machine answers on that port
    proc = subprocess.run([*argv, "true"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 255 and "host key" in proc.stderr.lower()
