"""Profiles by URL and by git reference: a local HTTP server and local git repositories.

Fetched once when pinned (no network afterwards), re-fetched and announced with their digest
when not, refused when the pinned digest does not match, ``extends`` resolved next to them.
"""

import hashlib
import shutil
import subprocess

import pytest
from httpmirror import Mirror, Route

from b2dkit import download, remoteprofile
from b2dkit import profile as profiles
from b2dkit.errors import DownloadError, InputError, ProfileError
from cli import outputs

SHA = "ab" * 32
BASE = """\
# the team's base: every laptop's VM
name: team-vm
provider: qemu
memory: 1024
cpus: 1
disk: 4096
iso:
  urls: [https://mirror.example/b2d.iso]
  sha256: {sha}
forwards:
  - {{host: 2022, guest: 22}}
""".format(sha=SHA)
TEAM = "extends: base.yaml\nmemory: 2048\nboot_codes: {tz: CST-8}\n"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def web():
    m = Mirror()
    m.routes["/profiles/base.yaml"] = Route(payload=BASE.encode())
    m.routes["/profiles/team.yaml"] = Route(payload=TEAM.encode())
    yield m
    m.close()


def gets(mirror, path):
    return sum(1 for p, _ in mirror.requests if p == path)


b2dkit = outputs  # (exit code, stdout, stderr) of one command


def test_an_unpinned_url_is_fetched_on_each_load_and_its_digest_is_announced(web):
    notes = []
    url = web.url("/profiles/team.yaml")
    path = remoteprofile.fetch(url, notify=notes.append)
    assert path.read_text() == TEAM
    assert notes == [f"fetched {url}: sha256 {digest(TEAM)}; pin it as --profile={url}#sha256={digest(TEAM)}"]
    prof = profiles.load(url)
    assert (prof.name, prof.memory, prof.boot_codes) == ("team-vm", 2048, {"tz": "CST-8"})
    assert gets(web, "/profiles/team.yaml") == 2  # unpinned: every load asks again
    assert profiles.display_path(prof.chain[0]) == url  # messages name the URL, not the cache
    assert profiles.display_path(prof.chain[1]) == web.url("/profiles/base.yaml")  # extends: next to it


def test_a_pinned_url_is_fetched_once_and_then_read_from_the_cache(web):
    team = TEAM.replace("base.yaml", f"base.yaml#sha256={digest(BASE)}")  # the parent pinned too
    web.routes["/profiles/team.yaml"] = Route(payload=team.encode())
    ref = f"{web.url('/profiles/team.yaml')}#sha256={digest(team)}"
    notes = []
    remoteprofile.fetch(ref, notify=notes.append)
    assert notes == []  # pinned: nothing to tell
    assert profiles.load(ref).memory == 2048
    web.close()  # offline from here on
    assert profiles.load(ref).memory == 2048  # the whole chain from the cache
    assert (gets(web, "/profiles/team.yaml"), gets(web, "/profiles/base.yaml")) == (1, 1)


def test_a_file_that_does_not_match_its_pin_is_refused(web, capfd):
    ref = f"{web.url('/profiles/team.yaml')}#sha256={SHA}"
    code, out, err = b2dkit(capfd, "profile.show", f"--profile={ref}")
    assert code == 2
    assert err.splitlines() == [
        f"b2dkit: error: {ref}: the fetched file has sha256 {digest(TEAM)}, not the pinned {SHA} "
        "(the profile changed where it is published; ask its owners, then pin the new digest)"]
    assert not list(remoteprofile.root().rglob("team.yaml"))  # nothing wrong was cached


def test_a_tampered_cache_copy_is_fetched_again(web):
    ref = f"{web.url('/profiles/base.yaml')}#sha256={digest(BASE)}"
    path = remoteprofile.fetch(ref)
    path.write_text(BASE.replace("1024", "4096"))
    assert remoteprofile.fetch(ref).read_text() == BASE
    assert gets(web, "/profiles/base.yaml") == 2


def test_offline_an_unpinned_profile_uses_the_last_copy_with_a_warning(web):
    url = web.url("/profiles/base.yaml")
    remoteprofile.fetch(url, notify=lambda _: None)
    web.routes["/profiles/base.yaml"] = Route(status=503)
    notes = []
    quick = download.Downloader(retries=0, backoff=0.01)
    assert remoteprofile.fetch(url, notify=notes.append, downloader=quick).read_text() == BASE
    assert len(notes) == 1 and "HTTP 503" in notes[0] and "using the copy fetched" in notes[0]
    with pytest.raises(DownloadError, match="HTTP 404"):
        remoteprofile.fetch(web.url("/profiles/never.yaml"), downloader=quick)


def test_a_fetched_profile_can_extend_a_builtin_by_name_but_not_a_local_file(web, tmp_path):
    web.routes["/p/cst-team.yaml"] = Route(payload=b"extends: cst\nname: team-cst\n")
    prof = profiles.load(web.url("/p/cst-team.yaml"))
    assert prof.name == "team-cst" and prof.boot_codes == {"tz": "CST-8"}
    assert profiles.display_path(prof.chain[1]).endswith("profiles/cst.yaml")
    (tmp_path / "mine.yaml").write_text(BASE)
    web.routes["/p/sneaky.yaml"] = Route(payload=f"extends: {tmp_path / 'mine.yaml'}\n".encode())
    with pytest.raises(ProfileError, match="cannot extend a file on this machine"):
        profiles.load(web.url("/p/sneaky.yaml"))


@pytest.mark.parametrize("text, why", [
    ("https://host/team.yaml#md5=abc", "the part after # must be sha256="),
    ("https://host/team.txt", "does not name a .yaml file"),
    ("git+https://host/repo.git:team.yaml", "is not a git profile reference"),
    ("git+https://host/repo.git@v1", "is not a git profile reference"),
    ("git+ftp://host/repo@v1:team.yaml", "is not a git profile reference"),
    ("git+https://host/repo@v1:../team.yaml", "is not a .yaml file inside the repository"),
])
def test_malformed_references_are_one_line_input_errors(text, why, capfd):
    with pytest.raises(InputError, match=why):
        remoteprofile.parse(text)
    code, _, err = b2dkit(capfd, "profile.show", f"--profile={text}")
    assert code == 2 and len(err.splitlines()) == 1 and why in err


# -- git -------------------------------------------------------------------------------------


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "team-profiles"
    (repo / "common").mkdir(parents=True)
    (repo / "vms").mkdir()
    (repo / "common" / "base.yaml").write_text(BASE)
    (repo / "vms" / "team.yaml").write_text(TEAM.replace("base.yaml", "../common/base.yaml"))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example", "commit", "-q", "--allow-empty", "-m", "x")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example", "commit", "-q", "-m", "profiles")
    git(repo, "tag", "v1")
    return repo


def commit_change(repo, relpath, text, tag=None):
    (repo / relpath).write_text(text)
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example", "commit", "-q", "-am", "change")
    if tag:
        git(repo, "tag", "-f", tag)
    return git(repo, "rev-parse", "HEAD")


def test_a_git_tag_reference_loads_with_extends_from_the_same_commit(repo):
    ref = f"git+file://{repo}@v1:vms/team.yaml"
    commit = git(repo, "rev-parse", "v1")
    notes = []
    path = remoteprofile.fetch(ref, notify=notes.append)
    team_text = (repo / "vms" / "team.yaml").read_text()
    assert path.read_text() == team_text
    assert notes == [f"fetched {ref} (commit {commit}): sha256 {digest(team_text)}; "
                     f"pin it as --profile={ref}#sha256={digest(team_text)}"]
    prof = profiles.load(ref)
    assert (prof.name, prof.memory) == ("team-vm", 2048)
    assert profiles.display_path(prof.chain[1]) == f"git+file://{repo}@{commit}:common/base.yaml"
    # The tag moves to a commit with another base: an unpinned tag follows it.
    commit_change(repo, "common/base.yaml", BASE.replace("cpus: 1", "cpus: 2"), tag="v1")
    assert profiles.load(ref).cpus == 2


def test_a_pinned_git_reference_refuses_a_moved_tag_and_a_commit_id_needs_no_network(repo, tmp_path):
    team_text = (repo / "vms" / "team.yaml").read_text()
    pinned = f"git+file://{repo}@v1:vms/team.yaml#sha256={digest(team_text)}"
    assert profiles.load(pinned).memory == 2048
    first = git(repo, "rev-parse", "v1")
    commit_change(repo, "vms/team.yaml", team_text.replace("2048", "3072"), tag="v1")
    with pytest.raises(ProfileError, match="not the pinned"):
        remoteprofile.fetch(pinned.replace(f"#sha256={digest(team_text)}", f"#sha256={SHA}"))
    # By commit id: fetched once, then the repository can go away.
    by_commit = f"git+file://{repo}@{first}:vms/team.yaml"
    assert profiles.load(by_commit).memory == 2048
    shutil.rmtree(repo)
    assert profiles.load(by_commit).memory == 2048
    with pytest.raises(DownloadError, match=r"cannot fetch 'v1' from file://"):
        remoteprofile.fetch(f"git+file://{repo}@v1:vms/other.yaml")


def test_a_missing_file_or_tag_in_git_is_one_line(repo, capfd):
    code, _, err = b2dkit(capfd, "profile.show", f"--profile=git+file://{repo}@v1:vms/nope.yaml")
    commit = git(repo, "rev-parse", "v1")
    assert code == 2 and err.strip().endswith(f"vms/nope.yaml does not exist at commit {commit[:12]}")
    code, _, err = b2dkit(capfd, "profile.show", f"--profile=git+file://{repo}@v9:vms/team.yaml")
    assert code == 3 and len(err.splitlines()) == 1 and "cannot fetch 'v9'" in err


def test_profile_show_names_the_chain_by_reference_and_iso_pin_refuses_a_fetched_file(web, capfd):
    url = web.url("/profiles/team.yaml")
    code, out, err = b2dkit(capfd, "profile.show", f"--profile={url}")
    assert code == 0, err
    assert out.splitlines()[0] == f"# profile team: {url} <- {web.url('/profiles/base.yaml')}"
    assert f"pin it as --profile={url}#sha256={digest(TEAM)}" in err
    code, _, err = b2dkit(capfd, "iso.pin", f"--profile={web.url('/profiles/base.yaml')}")
    assert code == 2 and "was fetched from elsewhere and is only a cached copy" in err
