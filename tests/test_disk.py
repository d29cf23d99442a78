import io
import tarfile

import pytest

from b2dkit import disk, sshkeys
from b2dkit.errors import InputError


def _members(header):
    # Read the header the way boot2docker's autoformat does: the first 4 KiB, as a tar.
    with tarfile.open(fileobj=io.BytesIO(header + bytes(1024)), mode="r:") as tar:
        return {m.name: (m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()}


def test_header_is_boot2docker_format_me_tar_with_keys(tmp_path):
    _, pub = sshkeys.ensure_keypair(tmp_path)
    header = disk.header_tar(pub)
    assert len(header) <= disk.HEADER_LIMIT
    assert header.startswith(disk.MAGIC.encode())  # first member's name is the magic string
    members = _members(header)
    names = list(members)
    assert names[0] == disk.MAGIC and members[disk.MAGIC][1] == disk.MAGIC.encode()
    assert members[".ssh"][0].isdir() and members[".ssh"][0].mode == 0o700
    for name in (".ssh/authorized_keys", ".ssh/authorized_keys2"):
        assert members[name][1].decode().strip() == pub
    assert disk.has_magic(header)


def test_rsa4096_sized_key_is_refused():
    with pytest.raises(InputError, match="too long"):
        disk.header_tar("ssh-rsa " + "A" * 740 + " me")


def test_write_stream_writes_exactly_total_bytes():
    header = disk.header_tar("ssh-ed25519 AAAAC3Nza test")
    out = io.BytesIO()
    total = 3 * (1 << 20) + 12345
    assert disk.write_stream(out, header, total) == total
    data = out.getvalue()
    assert len(data) == total and data[: len(header)] == header and not any(data[len(header):])


def test_create_raw_is_sparse_and_never_overwrites(tmp_path):
    header = disk.header_tar("ssh-ed25519 AAAAC3Nza test")
    path = disk.create_raw(tmp_path / "disk.img", header, disk.size_bytes(64))
    st = path.stat()
    assert st.st_size == 64 << 20 and st.st_blocks * 512 < (1 << 20)
    assert disk.read_header(path) == header
    with pytest.raises(InputError, match="refusing to overwrite"):
        disk.create_raw(path, header, 1 << 20)


def test_keypair_is_private_and_stable(tmp_path):
    priv, pub = sshkeys.ensure_keypair(tmp_path / "vm")
    assert (priv.stat().st_mode & 0o777) == 0o600
    assert pub.startswith("ssh-ed25519 ")
    again = sshkeys.ensure_keypair(tmp_path / "vm")
    assert again == (priv, pub)
