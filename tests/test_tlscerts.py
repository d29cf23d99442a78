"""tlscerts: a per-VM CA, client and server certs, checked by independent parties: the
`openssl` command line verifies the chain and purposes, and Python's ssl module completes a
real mutual-TLS handshake with them (as the docker CLI and dockerd do)."""

import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading

import pytest
from cryptography import x509

from b2dkit import tlscerts
from b2dkit.errors import InputError, MachineError

NOW = datetime.datetime(2026, 1, 10, 12, 0, tzinfo=datetime.timezone.utc)


def snapshot(directory):
    """(inode, mtime_ns, bytes) of each file: a re-run that changes nothing leaves it equal."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(directory.iterdir())}


def load(directory, name):
    return x509.load_pem_x509_certificate((directory / name).read_bytes())


@pytest.fixture
def certs(tmp_path):
    directory = tmp_path / "certs"
    changes = tlscerts.ensure(directory, "dev", now=NOW)
    assert [c.name for c in changes] == ["ca.pem", "cert.pem", "server.pem"]
    return directory


def test_first_run_writes_every_file_keys_private(certs):
    names = sorted(p.name for p in certs.iterdir())
    assert names == ["ca-key.pem", "ca.pem", "cert.pem", "key.pem", "server-key.pem", "server.pem"]
    for name in names:
        mode = stat.S_IMODE((certs / name).stat().st_mode)
        assert mode == (0o600 if "key" in name else 0o644), name
    assert stat.S_IMODE(certs.stat().st_mode) == 0o700
    assert not [p for p in certs.iterdir() if p.name.endswith(".part")]


def test_server_cert_names_loopback_and_localhost(certs):
    ips, names = tlscerts.cert_sans(load(certs, "server.pem"))
    assert ips == {ipaddress.ip_address("127.0.0.1")}
    assert names == {"localhost"}


def test_second_run_changes_nothing(certs):
    before = snapshot(certs)
    assert tlscerts.plan(certs, now=NOW + datetime.timedelta(days=30)) == []
    assert tlscerts.ensure(certs, "dev", now=NOW + datetime.timedelta(days=30)) == []
    assert snapshot(certs) == before


def test_openssl_verifies_the_chain_and_purposes(certs):
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    for leaf, purpose in (("server.pem", "sslserver"), ("cert.pem", "sslclient")):
        proc = subprocess.run(["openssl", "verify", "-CAfile", str(certs / "ca.pem"), "-purpose", purpose,
                               str(certs / leaf)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    wrong = subprocess.run(["openssl", "verify", "-CAfile", str(certs / "ca.pem"), "-purpose", "sslserver",
                            str(certs / "cert.pem")], capture_output=True, text=True)
    assert wrong.returncode != 0  # the client cert cannot serve


def _handshake(server_dir, client_dir, host="127.0.0.1", server_hostname="localhost"):
    """Mutual TLS over a real socket: True if both sides accept, else the client's error."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(server_dir / "server.pem", server_dir / "server-key.pem")
    server_ctx.load_verify_locations(server_dir / "ca.pem")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_cert_chain(client_dir / "cert.pem", client_dir / "key.pem")
    client_ctx.load_verify_locations(client_dir / "ca.pem")
    listener = socket.create_server((host, 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection((host, port), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                return tls.recv(2) == b"ok"
    except (ssl.SSLError, ssl.CertificateError) as exc:
        return exc
    finally:
        thread.join(10)
        listener.close()


def test_mutual_tls_handshake_by_ip_and_by_name(certs):
    assert _handshake(certs, certs, server_hostname="127.0.0.1") is True
    assert _handshake(certs, certs, server_hostname="localhost") is True
    assert isinstance(_handshake(certs, certs, server_hostname="example.com"), ssl.SSLError)


def test_another_vms_certs_are_refused(certs, tmp_path):
    other = tmp_path / "other"
    tlscerts.ensure(other, "other", now=NOW)
    assert isinstance(_handshake(certs, other), ssl.SSLError)


def test_extra_sans_and_a_san_change_reissues_only_the_server_cert(certs):
    before = snapshot(certs)
    changes = tlscerts.ensure(certs, "dev", extra_ips=["192.168.99.100"], extra_names=["dev.local"], now=NOW)
    assert [(c.name, c.reason) for c in changes] == [("server.pem", "names other hosts (SANs) than wanted")]
    after = snapshot(certs)
    for name in ("ca.pem", "ca-key.pem", "cert.pem", "key.pem"):
        assert after[name] == before[name]
    assert after["server.pem"][2] != before["server.pem"][2]
    assert after["server-key.pem"][2] != before["server-key.pem"][2]
    ips, names = tlscerts.cert_sans(load(certs, "server.pem"))
    assert ips == {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("192.168.99.100")}
    assert names == {"localhost", "dev.local"}
    assert tlscerts.plan(certs, extra_ips=["192.168.99.100"], extra_names=["DEV.local"], now=NOW) == []


@pytest.mark.parametrize("name", ["cert.pem", "key.pem", "server.pem", "server-key.pem"])
def test_a_deleted_leaf_file_reissues_that_pair_only(certs, name):
    pair = "cert.pem" if name in ("cert.pem", "key.pem") else "server.pem"
    (certs / name).unlink()
    before = snapshot(certs)
    changes = tlscerts.ensure(certs, "dev", now=NOW)
    assert [(c.name, c.reason) for c in changes] == [(pair, "missing")]
    assert snapshot(certs)["ca.pem"] == before["ca.pem"]
    assert _handshake(certs, certs) is True


def test_a_new_ca_reissues_both_leaves(certs):
    (certs / "ca-key.pem").unlink()
    changes = tlscerts.ensure(certs, "dev", now=NOW)
    assert [(c.name, c.reason) for c in changes] == [
        ("ca.pem", "missing"), ("cert.pem", "new CA"), ("server.pem", "new CA")]
    assert _handshake(certs, certs) is True


def test_expiry_and_the_renewal_margin(certs):
    ca_end = load(certs, "ca.pem").not_valid_after_utc
    leaf_end = load(certs, "server.pem").not_valid_after_utc
    assert leaf_end - NOW == datetime.timedelta(days=tlscerts.LEAF_DAYS)
    assert tlscerts.plan(certs, now=leaf_end - tlscerts.RENEW_BEFORE - datetime.timedelta(hours=1)) == []
    late = leaf_end - datetime.timedelta(days=1)
    assert {c.name for c in tlscerts.plan(certs, now=late)} == {"cert.pem", "server.pem"}
    assert [c.name for c in tlscerts.plan(certs, now=ca_end)] == ["ca.pem", "cert.pem", "server.pem"]
    assert load(certs, "server.pem").not_valid_before_utc < NOW  # a guest clock behind ours still accepts it


def test_garbage_and_a_foreign_signature_are_reissued(certs, tmp_path):
    (certs / "server.pem").write_text("not a certificate\n")
    assert [(c.name, c.reason) for c in tlscerts.plan(certs, now=NOW)] == [("server.pem", "unreadable")]
    other = tmp_path / "other"
    tlscerts.ensure(other, "other", now=NOW)
    for name in ("server.pem", "server-key.pem"):
        (certs / name).write_bytes((other / name).read_bytes())
    assert [(c.name, c.reason) for c in tlscerts.plan(certs, now=NOW)] == [
        ("server.pem", "not signed by this VM's ca.pem")]
    (certs / "key.pem").write_bytes((other / "key.pem").read_bytes())
    assert ("cert.pem", "does not match key.pem") in [(c.name, c.reason) for c in tlscerts.plan(certs, now=NOW)]


def test_server_files_are_what_the_guest_reads(certs):
    files = tlscerts.server_files(certs)
    assert sorted(files) == ["ca.pem", "server-key.pem", "server.pem"]
    assert files["server-key.pem"].startswith(b"-----BEGIN PRIVATE KEY-----")


@pytest.mark.parametrize("ips,names", [(["300.1.1.1"], []), (["localhost"], []), ([], ["a b"]), ([], [""])])
def test_bad_extra_sans_are_one_line_errors(tmp_path, ips, names):
    with pytest.raises(InputError) as info:
        tlscerts.ensure(tmp_path / "c", "dev", extra_ips=ips, extra_names=names, now=NOW)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "c").exists()


def test_umask_does_not_loosen_the_keys(tmp_path):
    old = os.umask(0)
    try:
        tlscerts.ensure(tmp_path / "c", "dev", now=NOW)
    finally:
        os.umask(old)
    for name in ("ca-key.pem", "key.pem", "server-key.pem"):
        assert stat.S_IMODE((tmp_path / "c" / name).stat().st_mode) == 0o600


def test_a_ca_key_removed_after_the_plan_is_a_clear_error(certs, monkeypatch):
    """Another process deleting the CA key between plan() and the re-issue: one line, exit 3, no crash."""
    (certs / "server.pem").unlink()
    planned = tlscerts.plan

    def plan_then_lose_the_key(*args, **kwargs):
        changes = planned(*args, **kwargs)
        (certs / "ca-key.pem").unlink()
        return changes

    monkeypatch.setattr(tlscerts, "plan", plan_then_lose_the_key)
    with pytest.raises(MachineError, match="ca-key.pem changed while b2dkit was using it"):
        tlscerts.ensure(certs, "dev", now=NOW)
    assert not (certs / "server.pem").exists()
