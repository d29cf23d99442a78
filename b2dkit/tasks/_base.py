"""What every task shares: turning any failure into one clean line and an exit code."""

import datetime
import functools
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

from invoke import Exit
from invoke import task as _invoke_task

from .. import paths
from ..errors import B2dkitError, InternalError, cannot_write

REPORT_TO = "https://github.com/b2dkit/b2dkit/issues"


def bug_exit(exc: BaseException) -> Exit:
    """An unexpected exception: the traceback goes to a log file, the user gets one line.

    No traceback ever reaches a user; the line names the log so a report can carry it.
    """
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    log = _write_log(f"crash-{stamp}-{os.getpid()}.log", f"b2dkit {' '.join(sys.argv[1:])}\n{text}")
    what = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    where = f"the traceback is in {log}" if log else "the traceback could not be saved"
    return Exit(
        f"b2dkit: internal error (a bug in b2dkit): {what}; {where}; please report it at {REPORT_TO}",
        code=InternalError.exit_code,
    )


def _write_log(name: str, text: str) -> Optional[Path]:
    """Write a crash log under the data dir (or the temp dir if that fails); None if neither works."""
    for folder in (paths.data_dir() / "logs", Path(tempfile.gettempdir())):
        try:
            paths.ensure_dir(folder)
            path = folder / name
            tmp = folder / f".{name}.part"
            tmp.write_text(text)
            os.replace(tmp, path)
            return path
        except Exception:  # noqa: S110 - a crash report must not crash; try the next folder
            continue
    return None


def task(*args: Any, **kwargs: Any) -> Any:
    """``invoke.task`` that prints B2dkitError as one line (``b2dkit: error: ...``) and exits.

    Used bare (``@task``) or with options (``@task(help=...)``), as invoke's is: so the result
    is a Task or a decorator, typed Any as invoke types its own.

    Any other exception is a bug: one line naming the log with the traceback (exit 70).
    """

    def decorate(func: Callable[..., Any]) -> Any:
        @functools.wraps(func)
        def wrapper(*a: Any, **kw: Any) -> Any:
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
            except Exit:
                raise
            except OSError as exc:  # a full or read-only disk is the machine's, not a bug
                refused = cannot_write(exc)
                if refused is None:
                    raise bug_exit(exc) from None
                raise Exit(f"b2dkit: error: {refused}", code=refused.exit_code) from None
            except Exception as exc:
                raise bug_exit(exc) from None

        return _invoke_task(wrapper, **kwargs)

    if args and callable(args[0]) and not kwargs:
        return decorate(args[0])
    return decorate


def say(text: str = "") -> None:
    print(text, flush=True)


def print_json(data: object) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
