"""QEMU: ``qemusystem`` runs qemu-system and speaks QMP, ``provider`` drives one VM through it."""
