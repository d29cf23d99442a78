"""Per-VM TLS for the guest's Docker daemon, the way docker-machine does it.

Each VM gets its own CA, a client certificate for this computer and a server certificate for
the guest's dockerd (SANs 127.0.0.1 and localhost, because the daemon is reached through a
loopback NAT forward, plus the VM's own address where one exists). One folder holds them,
laid out as ``DOCKER_CERT_PATH`` expects (``ca.pem``, ``cert.pem``, ``key.pem``) next to the
server side b2dkit installs into the guest's ``/var/lib/boot2docker`` (``server.pem``,
``server-key.pem``) and the CA key. Keys are written 0600 through temp + rename.

``ensure`` is idempotent: it re-issues a file only when it is missing, unreadable, expired (or
within ``RENEW_BEFORE`` of it), no longer matches its key or its CA, or, for the server cert,
names other SANs than wanted. A new CA re-issues both leaves. ``plan`` says what ``ensure``
would do, without writing.
"""

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, FrozenSet, Iterable, List, Optional, Set, Tuple, Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import atomic
from .errors import InputError, MachineError
from .paths import StrPath

CA_CERT, CA_KEY = "ca.pem", "ca-key.pem"
CLIENT_CERT, CLIENT_KEY = "cert.pem", "key.pem"
SERVER_CERT, SERVER_KEY = "server.pem", "server-key.pem"
# What the guest's /etc/init.d/docker reads from /var/lib/boot2docker (boot2docker's names).
SERVER_FILES = (CA_CERT, SERVER_CERT, SERVER_KEY)
CLIENT_FILES = (CA_CERT, CLIENT_CERT, CLIENT_KEY)  # DOCKER_CERT_PATH

DEFAULT_IPS = ("127.0.0.1",)
DEFAULT_NAMES = ("localhost",)
CA_DAYS = 3650
LEAF_DAYS = 1095  # docker-machine's leaf lifetime is about three years too
RENEW_BEFORE = datetime.timedelta(days=7)  # renew a little early so a cert never dies mid-week
# Certificates may be dated a little in the past: a guest clock behind the host's must not make
# a fresh cert "not yet valid" for the daemon.
BACKDATE = datetime.timedelta(hours=1)

# What an IPAddress SAN holds: b2dkit names addresses only, a foreign cert may name a network.
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network, ipaddress.IPv6Network]
Sans = Tuple[FrozenSet[IPAddress], FrozenSet[str]]  # (IP addresses, DNS names) a server cert names
Key = ec.EllipticCurvePrivateKey  # every key b2dkit issues or accepts (P-256)


@dataclass(frozen=True)
class Change:
    """One file ``ensure`` (re)writes and why, for a user to read."""

    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


def _now(now: Optional[datetime.datetime]) -> datetime.datetime:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now if now.tzinfo else now.replace(tzinfo=datetime.timezone.utc)


def wanted_sans(extra_ips: Iterable[str] = (), extra_names: Iterable[str] = ()) -> Sans:
    """(IP addresses, DNS names) the server cert must name; bad input is one clear error."""
    ips: Set[IPAddress] = set()
    for text in (*DEFAULT_IPS, *extra_ips):
        try:
            ips.add(ipaddress.ip_address(str(text).strip()))
        except ValueError:
            raise InputError(f"{text!r} is not an IP address for the Docker server certificate") from None
    names: Set[str] = set()
    for text in (*DEFAULT_NAMES, *extra_names):
        name = str(text).strip().lower()
        if not name or any(ch.isspace() or ch in "/:@" for ch in name):
            raise InputError(f"{text!r} is not a host name for the Docker server certificate")
        names.add(name)
    return frozenset(ips), frozenset(names)


# -- reading what is there ---------------------------------------------------------------------


def _load_cert(path: Path) -> Optional[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _load_key(path: Path) -> Optional[Key]:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _not_after(cert: x509.Certificate) -> datetime.datetime:
    value = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def _same_key(cert: x509.Certificate, key: Key) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert.issuer != ca.subject:
        return False
    public = ca.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or cert.signature_hash_algorithm is None:
        return False
    try:
        public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    except InvalidSignature:
        return False
    return True


def cert_sans(cert: x509.Certificate) -> Sans:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset(), frozenset()
    return (frozenset(ext.get_values_for_type(x509.IPAddress)),
            frozenset(name.lower() for name in ext.get_values_for_type(x509.DNSName)))


def _usage(cert: x509.Certificate) -> FrozenSet[x509.ObjectIdentifier]:
    try:
        return frozenset(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return frozenset()


def _problem(
    directory: Path,
    cert_name: str,
    key_name: str,
    now: datetime.datetime,
    ca: Optional[x509.Certificate] = None,
    usage: Optional[x509.ObjectIdentifier] = None,
    sans: Optional[Sans] = None,
) -> Optional[str]:
    """Why this cert/key pair must be re-issued, or None when it is good."""
    cert_path, key_path = directory / cert_name, directory / key_name
    if not cert_path.exists() or not key_path.exists():
        return "missing"
    cert, key = _load_cert(cert_path), _load_key(key_path)
    if cert is None or key is None:
        return "unreadable"
    if not _same_key(cert, key):
        return f"does not match {key_name}"
    if _not_after(cert) - RENEW_BEFORE <= now:
        return f"expires {_not_after(cert):%Y-%m-%d}"
    if ca is not None and not _signed_by(cert, ca):
        return f"not signed by this VM's {CA_CERT}"
    if usage is not None and usage not in _usage(cert):
        return "wrong key usage"
    if sans is not None and cert_sans(cert) != sans:
        return "names other hosts (SANs) than wanted"
    return None


def plan(directory: StrPath, extra_ips: Iterable[str] = (), extra_names: Iterable[str] = (),
         now: Optional[datetime.datetime] = None) -> List[Change]:
    """The files ``ensure`` would write now, each with its reason; empty when all are good."""
    directory = Path(directory)
    now = _now(now)
    sans = wanted_sans(extra_ips, extra_names)
    changes = []
    ca_reason = _problem(directory, CA_CERT, CA_KEY, now)
    ca = None if ca_reason else _load_cert(directory / CA_CERT)
    if ca_reason:
        changes.append(Change(CA_CERT, ca_reason))
    client = "new CA" if ca_reason else _problem(directory, CLIENT_CERT, CLIENT_KEY, now, ca,
                                                 ExtendedKeyUsageOID.CLIENT_AUTH)
    if client:
        changes.append(Change(CLIENT_CERT, client))
    server = "new CA" if ca_reason else _problem(directory, SERVER_CERT, SERVER_KEY, now, ca,
                                                 ExtendedKeyUsageOID.SERVER_AUTH, sans)
    if server:
        changes.append(Change(SERVER_CERT, server))
    return changes


# -- issuing -----------------------------------------------------------------------------------


def _new_key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: Key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, now: datetime.datetime, days: int
) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                         encipher_only=False, decipher_only=False)


def _issue_ca(vm_name: str, now: datetime.datetime) -> Tuple[x509.Certificate, Key]:
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "b2dkit"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"b2dkit CA for VM {vm_name}")])
    cert = (_builder(name, name, key.public_key(), now, CA_DAYS)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _issue_leaf(
    ca_cert: x509.Certificate,
    ca_key: Key,
    common_name: str,
    usage: x509.ObjectIdentifier,
    now: datetime.datetime,
    sans: Optional[Sans] = None,
) -> Tuple[x509.Certificate, Key]:
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "b2dkit"),
                         x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (_builder(subject, ca_cert.subject, key.public_key(), now, LEAF_DAYS)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(_leaf_usage(), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if sans is not None:
        ips, names = sans
        general = [x509.DNSName(n) for n in sorted(names)] + [x509.IPAddress(i) for i in sorted(ips, key=str)]
        builder = builder.add_extension(x509.SubjectAlternativeName(general), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _write_pair(directory: Path, cert_name: str, key_name: str, cert: x509.Certificate, key: Key) -> None:
    # The key first: a run killed in between leaves a cert that no longer matches it, which the
    # next run re-issues (never a cert paired with a key nobody has).
    atomic.write_bytes(directory / key_name, _key_pem(key), mode=0o600)
    atomic.write_bytes(directory / cert_name, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def ensure(directory: StrPath, vm_name: str, extra_ips: Iterable[str] = (), extra_names: Iterable[str] = (),
           now: Optional[datetime.datetime] = None) -> List[Change]:
    """Make the VM's CA, client and server certs good; returns what was (re)issued and why."""
    directory = Path(directory)
    now = _now(now)
    changes = plan(directory, extra_ips, extra_names, now)
    if not changes:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    todo = {change.name for change in changes}
    if CA_CERT in todo:
        ca_cert, ca_key = _issue_ca(vm_name, now)
        _write_pair(directory, CA_CERT, CA_KEY, ca_cert, ca_key)
    else:
        loaded_cert, loaded_key = _load_cert(directory / CA_CERT), _load_key(directory / CA_KEY)
        if loaded_cert is None or loaded_key is None:  # plan() read them fine: something changed them since
            gone = CA_CERT if loaded_cert is None else CA_KEY
            raise MachineError(f"{directory / gone} changed while b2dkit was using it; run the command again")
        ca_cert, ca_key = loaded_cert, loaded_key
    if CLIENT_CERT in todo:
        cert, key = _issue_leaf(ca_cert, ca_key, f"b2dkit client for VM {vm_name}",
                                ExtendedKeyUsageOID.CLIENT_AUTH, now)
        _write_pair(directory, CLIENT_CERT, CLIENT_KEY, cert, key)
    if SERVER_CERT in todo:
        sans = wanted_sans(extra_ips, extra_names)
        cert, key = _issue_leaf(ca_cert, ca_key, f"b2dkit dockerd on VM {vm_name}",
                                ExtendedKeyUsageOID.SERVER_AUTH, now, sans)
        _write_pair(directory, SERVER_CERT, SERVER_KEY, cert, key)
    return changes


def server_files(directory: StrPath) -> Dict[str, bytes]:
    """What goes into the guest's /var/lib/boot2docker: {file name: content} (the key is secret)."""
    directory = Path(directory)
    return {name: (directory / name).read_bytes() for name in SERVER_FILES}
