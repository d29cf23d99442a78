"""What b2dkit relies on in every boot2docker guest (the real one and guest/'s stand-in)."""

DEFAULT_USER = "docker"  # the login user, with passwordless sudo
PERSISTENT_ROOT = "/mnt/sda1"  # the data disk; everything else in the guest is RAM and lost on reboot
