"""Shell completion as bash runs it: the printed script is sourced in a real bash, COMP_WORDS and
COMP_CWORD are set the way bash sets them (``--profile=de`` is three words), the function is
called, and COMPREPLY is read back.  VMs and forwards come from the fake VBoxManage.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from b2dkit.main import make_program
from fakevbox import install

BIN = Path(sys.executable).parent  # the venv's b2dkit console script

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("completion") / "b2dkit.bash"
    out = subprocess.run([str(BIN / "b2dkit"), "--print-completion-script", "bash"], capture_output=True,
                         text=True, check=True).stdout
    path.write_text(out)
    return path


def complete(script, words, cword=None, cur=None):
    """COMPREPLY for ``words`` with the cursor on word ``cword`` (default: the last one); ``cur`` is
    bash's $2, the text readline completes (the word itself, except "" right after a '=')."""
    cword = len(words) - 1 if cword is None else cword
    cur = words[cword] if cur is None else cur
    quoted = " ".join(_bash_quote(w) for w in words)
    prog = (f"source {_bash_quote(str(script))}\n"
            f"COMP_WORDS=({quoted}); COMP_CWORD={cword}\n"
            f"_b2dkit_complete b2dkit {_bash_quote(cur)} {_bash_quote(words[cword - 1])}\n"
            "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", prog], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


def _bash_quote(text):
    return "'" + text.replace("'", "'\\''") + "'"


@pytest.fixture
def vms(tmp_path, monkeypatch, boot2docker_iso):
    """Two VMs on the fake VirtualBox; ``dev`` (active, made last) has two more forwards."""
    fake = install(tmp_path / "fv", monkeypatch)
    iso = tmp_path / "b2d.iso"
    shutil.copyfile(boot2docker_iso, iso)
    profile = tmp_path / "small.yaml"
    profile.write_text("extends: default\ndisk: 1024\n")
    other = tmp_path / "other.yaml"
    other.write_text(f"extends: {profile}\nforwards:\n  - {{host: 2022, remove: true}}\n"
                     "  - {host: 2122, guest: 22}\n")
    for name, prof in (("other", other), ("dev", profile)):
        make_program().run(["b2dkit", "vm.create", f"--profile={prof}", "--provider=virtualbox", f"--name={name}",
                            f"--iso={iso}", "--no-start"], exit=False)
    make_program().run(["b2dkit", "vm.forward", "8080"], exit=False)
    make_program().run(["b2dkit", "vm.forward", "5353:53/udp"], exit=False)
    return fake


def test_task_names_complete_from_a_prefix(script):
    assert complete(script, ["b2dkit", "vm.s"]) == ["vm.ssh", "vm.ssh-config", "vm.start", "vm.status", "vm.stop"]
    assert "iso.pin" in complete(script, ["b2dkit", ""]) and "onboard" in complete(script, ["b2dkit", ""])
    # After a complete task and a flag without a value, another task may follow.
    assert "vm.start" in complete(script, ["b2dkit", "vm.create", "--no-start", ""])


def test_flags_of_the_task_complete(script):
    assert complete(script, ["b2dkit", "vm.create", "--pro"]) == ["--profile", "--provider"]
    assert complete(script, ["b2dkit", "iso.pin", "--"]) == ["--dry-run", "--from", "--help", "--profile", "--url"]


@pytest.mark.parametrize("words, cword", [
    (["b2dkit", "onboard", "--profile", "=", ""], 4),  # bash: --profile=<TAB> ...
    (["b2dkit", "onboard", "--profile", "="], 3),  # ... as bash really has it: the cursor on the '=' word
    (["b2dkit", "onboard", "--profile", ""], 3),  # --profile <TAB>
])
def test_profile_values_are_profile_names_however_bash_split_the_words(script, words, cword, tmp_path, monkeypatch):
    team = tmp_path / "team"
    team.mkdir()
    (team / "backend.yaml").write_text("extends: cst\n")
    monkeypatch.setenv("B2DKIT_PROFILES", str(team))
    assert complete(script, words, cword, cur="") == ["backend", "cst", "default", "demo"]


def test_a_partial_value_is_filtered_and_a_path_is_left_to_file_completion(script):
    assert complete(script, ["b2dkit", "vm.create", "--profile", "=", "de"]) == ["default", "demo"]
    assert complete(script, ["b2dkit", "vm.create", "--profile", "./"]) == []  # -o default: file names
    assert complete(script, ["b2dkit", "vm.create", "--provider", "=", ""]) == ["auto", "qemu", "virtualbox"]
    assert complete(script, ["b2dkit", "--print-completion-script", ""]) == ["bash", "zsh"]


def test_vm_names_and_the_forwards_in_use_complete(script, vms):
    assert complete(script, ["b2dkit", "vm.status", "--name", "=", ""]) == ["dev", "other"]
    assert complete(script, ["b2dkit", "vm.ssh-config", "--name", "o"]) == ["other"]
    # vm.unforward SPEC: the active VM's forwards as the hypervisor has them ...
    assert complete(script, ["b2dkit", "vm.unforward", ""]) == ["2022", "5353/udp", "8080"]
    assert complete(script, ["b2dkit", "vm.unforward", "8"]) == ["8080"]
    # ... or those of the VM named before it.
    assert complete(script, ["b2dkit", "vm.unforward", "--name", "=", "other", ""]) == ["2122"]


def test_completion_never_prints_an_error_into_the_prompt(script, tmp_path):
    # No VM at all: vm.unforward has nothing to offer, quietly.
    assert complete(script, ["b2dkit", "vm.unforward", ""]) == []
    assert complete(script, ["b2dkit", "vm.create", "--profile", "'unfinished"]) == []


def test_real_interactive_bash_completes_a_profile_value_on_tab(script, tmp_path):
    """The whole way: readline in an interactive bash on a pty, the script sourced, TAB pressed."""
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:
        os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        os.environ["PS1"] = "$ "
        os.execvp("bash", ["bash", "--norc", "--noprofile", "-i"])
    seen = bytearray()

    def lines():
        """Whole lines on the screen, terminal control sequences taken out."""
        plain = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z@]", b"", bytes(seen)).replace(b"\r", b"")
        return plain.split(b"\n")[:-1]

    def wait_for(line: bytes, timeout=60.0):
        deadline = time.monotonic() + timeout
        while line not in lines() and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    seen.extend(os.read(fd, 4096))
                except OSError:
                    break
        return line in lines()

    try:
        os.write(fd, f"source {_bash_quote(str(script))}; echo sourced-ok\n".encode())
        assert wait_for(b"sourced-ok"), seen  # the output line, not the typed one
        # TAB, then Ctrl-A and "echo ": print the completed line instead of running it (the keys
        # queue behind the TAB, which readline finishes first).
        os.write(fd, b"b2dkit onboard --profile=cs\t\x01echo \n")
        assert wait_for(b"b2dkit onboard --profile=cst"), seen.decode(errors="replace")
    finally:
        os.write(fd, b"exit\n")
        os.waitpid(pid, 0)
        os.close(fd)


def test_a_tab_does_not_pay_for_the_downloader_or_the_yaml_editor():
    """Every TAB starts b2dkit afresh: the task layer must not import what only some tasks need."""
    heavy = "('requests', 'ruamel.yaml', 'tqdm', 'paramiko', 'jsonschema')"
    probe = f"import sys, b2dkit.main; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
