"""The task namespace shared by ``b2dkit …`` and, inside the repo, ``invoke …``.

Task modules are thin: parse arguments, call the library, print.
"""

from invoke import Collection

ns = Collection()

from . import iso  # noqa: E402

ns.add_collection(Collection.from_module(iso, name="iso"))
