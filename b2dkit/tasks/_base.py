"""What every task shares: turning library errors into one clean line and an exit code."""

import functools
import json
import os
import sys

from invoke import Exit
from invoke import task as _invoke_task

from ..errors import B2dkitError


def task(*args, **kwargs):
    """``invoke.task`` that prints B2dkitError as one line (``b2dkit: error: ...``) and exits.

    Tracebacks are for our bugs only; user-facing failures never show one.
    """

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*a, **kw):
            try:
                return func(*a, **kw)
            except B2dkitError as exc:
                raise Exit(f"b2dkit: error: {exc}", code=exc.exit_code) from None
            except BrokenPipeError:  # `b2dkit ... | head`: the reader left; that is not an error
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise Exit(code=0) from None
            except KeyboardInterrupt:
                raise Exit(
                    "b2dkit: interrupted; nothing half-done was kept, re-run to continue", code=130
                ) from None

        return _invoke_task(wrapper, **kwargs)

    if args and callable(args[0]) and not kwargs:
        return decorate(args[0])
    return decorate


def say(text=""):
    print(text, flush=True)


def print_json(data):
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
