"""Per-VM SSH key pairs: one ed25519 key per VM, private half 0600, never a password.

ed25519 because its public line (~100 bytes) fits twice in boot2docker's 4 KiB
``userdata.tar`` header with room to spare (RSA-4096 does not; see disk.py).
"""

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Tuple

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import atomic
from .errors import InputError
from .paths import StrPath

if TYPE_CHECKING:  # the alias is newer than the cryptography we accept at run time
    from cryptography.hazmat.primitives.serialization import SSHPrivateKeyTypes

KEY_NAME = "id_ed25519"


def ensure_keypair(vm_dir: StrPath, comment: str = "b2dkit") -> Tuple[Path, str]:
    """Return (private key path, public OpenSSH line), generating the pair on first use."""
    vm_dir = Path(vm_dir)
    vm_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = vm_dir / KEY_NAME
    public = vm_dir / (KEY_NAME + ".pub")
    if private.exists():
        if (private.stat().st_mode & 0o077) != 0:
            private.chmod(0o600)  # ssh refuses group/world-readable keys
        if not public.exists():
            atomic.write_bytes(public, (_public_line(_load(private), comment) + "\n").encode())
        return private, public.read_text().strip()
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    atomic.write_bytes(private, pem, mode=0o600)
    line = _public_line(key, comment)
    atomic.write_bytes(public, (line + "\n").encode())
    return private, line


def public_line(vm_dir: StrPath) -> Optional[str]:
    """The VM's public OpenSSH line if its pair exists (a dry run must not make one)."""
    public = Path(vm_dir) / (KEY_NAME + ".pub")
    return public.read_text().strip() if public.is_file() else None


def _load(private: Path) -> "SSHPrivateKeyTypes":
    try:
        return serialization.load_ssh_private_key(private.read_bytes(), password=None)
    except ValueError as exc:
        raise InputError(f"SSH key {private} is unreadable ({exc}); delete it to generate a new one") from None


def _public_line(key: "SSHPrivateKeyTypes", comment: str) -> str:
    blob = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{blob.decode()} {comment}"
