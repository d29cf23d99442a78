"""The ``b2dkit`` console command: an ``invoke.Program`` bound to our task namespace."""

from invoke import Config, Program

from . import __version__
from .tasks import ns


class B2dConfig(Config):
    prefix = "b2dkit"


def make_program():
    return Program(
        name="b2dkit",
        binary="b2dkit",
        binary_names=["b2dkit"],
        version=__version__,
        namespace=ns,
        config_class=B2dConfig,
    )


program = make_program()
