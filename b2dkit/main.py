"""The ``b2dkit`` console command: an ``invoke.Program`` bound to our task namespace."""

import sys

from invoke import Config, Exit, Program

from . import __version__
from .tasks import ns
from .tasks._base import bug_exit


class B2dConfig(Config):
    prefix = "b2dkit"


class B2dProgram(Program):
    """invoke's Program, with the last word on any exception the task wrapper did not see."""

    def run(self, argv=None, exit=True):
        try:
            return super().run(argv, exit=exit)
        except (SystemExit, Exit, KeyboardInterrupt):
            raise
        except Exception as exc:
            failure = bug_exit(exc)
            print(failure.message, file=sys.stderr)
            if not exit:
                raise failure from None
            sys.exit(failure.code)


def make_program():
    return B2dProgram(
        name="b2dkit",
        binary="b2dkit",
        binary_names=["b2dkit"],
        version=__version__,
        namespace=ns,
        config_class=B2dConfig,
    )


program = make_program()
