"""What differs between the VirtualBox versions the fake imitates (``FAKEVBOX_VERSION``).

Each flag names its source. "guess" marks what no source confirmed; the team reference
(virtualbox-versions.md, rows cited as vv#N) and the VirtualBox sources win over this file.
"""

import os


# The versions the provider tests run against (issue #12), with build revisions in the
# shape ``VBoxManage --version`` prints. The revision numbers are guesses; the format is real.
VERSIONS = {
    "6.1.50": "6.1.50r161033",
    "7.0.0": "7.0.0r153978",
    "7.0.20": "7.0.20r163906",
    "7.1.4": "7.1.4r165100",
    "7.2.0": "7.2.0r170228",
}
DEFAULT = "7.0.20"


def _triple(text: str) -> "tuple[int, int, int]":
    head = text.split("r", 1)[0].split("_", 1)[0]
    parts = (head.split(".") + ["0", "0"])[:3]
    return tuple(int(p) for p in parts)


class Version:
    """One VirtualBox release; ``text`` is what ``--version`` prints. (No dataclass: every fake
    call imports this, and start-up time is most of what a fake call costs.)"""

    def __init__(self, text: str):
        self.text = text

    @classmethod
    def from_env(cls) -> "Version":
        wanted = os.environ.get("FAKEVBOX_VERSION") or DEFAULT
        return cls(VERSIONS.get(wanted, wanted))

    @property
    def triple(self) -> "tuple[int, int, int]":
        return _triple(self.text)

    # -- showvminfo --machinereadable ---------------------------------------------------
    @property
    def slot_keys_with_port(self) -> bool:
        """``"SATA-tempeject-0-0"`` instead of ``"SATA-tempeject"`` (VBoxManageInfo.cpp: "missed
        the port and unit bits prior to VBox 7.0"; vv#12)."""
        return self.triple >= (7, 0, 0)

    @property
    def per_medium_flags(self) -> bool:
        """``-hot-pluggable-P-U`` / ``-nonrotational-P-U`` / ``-discard-P-U`` keys (vv#12 lists them
        for 7.0+; that 6.1 prints none of them is a guess from the 5.2-era sample)."""
        return self.triple >= (7, 0, 0)

    @property
    def stray_encryption_line(self) -> bool:
        """7.0.x prints the human ``Encryption:     disabled`` line into machine-readable output
        (Vagrant's 7.0.0 fixture; vv#12)."""
        return (7, 0, 0) <= self.triple < (7, 1, 0)

    @property
    def encryption_key(self) -> bool:
        """``encryption="disabled"``: what today's VBoxManageInfo.cpp prints; that 7.1 is where the
        stray line became this key is a guess."""
        return self.triple >= (7, 1, 0)

    @property
    def platform_key(self) -> bool:
        """``platformArchitecture="x86"`` (the IPlatform API of today's source; 7.1+ is a guess)."""
        return self.triple >= (7, 1, 0)

    @property
    def hides_forwarding_over_one_rule(self) -> bool:
        """7.0.0 prints no ``Forwarding(N)`` once a NIC has more than one rule (Vagrant
        version_7_0.rb ``read_forwarded_ports``, "Only use this override for the 7.0.0 release")."""
        return self.triple == (7, 0, 0)

    @property
    def settings_version(self) -> str:
        """The .vbox ``version`` attribute: 1.19 for 7.0 is in Vagrant's fixture; 1.16 (6.1) and
        1.20 (7.1+) are guesses."""
        if self.triple >= (7, 1, 0):
            return "1.20-linux"
        if self.triple >= (7, 0, 0):
            return "1.19-linux"
        return "1.16-linux"

    # -- NAT -------------------------------------------------------------------------------
    @property
    def libslirp(self) -> bool:
        """The libslirp NAT engine: a busy host port fails power-up (VERR_NAT_REDIR_SETUP) and a live
        add that cannot bind only logs "Port forward modify FAIL" (DrvNATlibslirp.cpp). Shipped
        from 7.1 per vv#5, which calls that "(inferred)"."""
        return self.triple >= (7, 1, 0)

    @property
    def localhost_reachable_option(self) -> bool:
        """``--nat-localhostreachableN`` exists in 7.x only; 6.1 rejects it (vv#11)."""
        return self.triple >= (7, 0, 0)

    # -- the rest --------------------------------------------------------------------------
    @property
    def translates(self) -> bool:
        """VBoxManage >= 7.0 loads translations (VirtualBoxTranslator; vv#6)."""
        return self.triple >= (7, 0, 0)

    @property
    def delete_all_option(self) -> bool:
        """``unregistervm --delete-all`` is 7.x only (vv#2)."""
        return self.triple >= (7, 0, 0)
