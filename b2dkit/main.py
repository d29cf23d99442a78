"""The ``b2dkit`` console command: an ``invoke.Program`` bound to our task namespace."""

import sys
from typing import List, Optional

from invoke import Config, Exit

from . import __version__
from .completion import CompletingProgram
from .tasks import ns
from .tasks._base import bug_exit


class B2dConfig(Config):
    prefix = "b2dkit"


class B2dProgram(CompletingProgram):
    """invoke's Program, completing task names and values (``CompletingProgram``), with the
    last word on any exception the task wrapper did not see."""

    def run(self, argv: Optional[List[str]] = None, exit: bool = True) -> None:
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


def make_program() -> B2dProgram:
    return B2dProgram(
        name="b2dkit",
        binary="b2dkit",
        binary_names=["b2dkit"],
        version=__version__,
        namespace=ns,
        config_class=B2dConfig,
    )


program = make_program()
