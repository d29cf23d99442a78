"""The ``b2dkit`` console command: an ``invoke.Program`` bound to our task namespace."""

from invoke import Config

from . import __version__
from .completion import CompletingProgram
from .tasks import ns


class B2dConfig(Config):
    prefix = "b2dkit"


def make_program():
    return CompletingProgram(
        name="b2dkit",
        binary="b2dkit",
        binary_names=["b2dkit"],
        version=__version__,
        namespace=ns,
        config_class=B2dConfig,
    )


program = make_program()
