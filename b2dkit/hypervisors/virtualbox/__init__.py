"""VirtualBox: ``vboxmanage`` runs the program, ``provider`` drives one VM through it."""
