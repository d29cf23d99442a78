"""The task namespace shared by ``b2dkit …`` and, inside the repo, ``invoke …``.

Task modules are thin: parse arguments, call the library, print.
"""

from invoke import Collection

from . import iso, onboard, profile, vm

ns = Collection()
ns.add_collection(Collection.from_module(iso, name="iso"))
ns.add_collection(Collection.from_module(profile, name="profile"))
ns.add_collection(Collection.from_module(vm, name="vm"))
ns.add_task(onboard.onboard)
ns.add_task(onboard.doctor)
