"""The one way tests type a ``b2dkit …`` command: in this process, exit code and output captured."""

from b2dkit.main import make_program


def invoke(*argv) -> int:
    """Run ``b2dkit *argv`` as the console command does; its exit code (0 when it returns)."""
    try:
        make_program().run(["b2dkit", *argv], exit=True)
    except SystemExit as exc:
        return exc.code or 0
    return 0


def run(*argv) -> None:
    """A command that must succeed; a failure fails the test with the exit code."""
    code = invoke(*argv)
    if code:
        raise AssertionError(f"b2dkit {' '.join(argv)} exited {code}")


def task(capture, *argv):
    """(exit code, captured output) of one command; ``capture`` is pytest's capsys or capfd."""
    capture.readouterr()
    code = invoke(*argv)
    return code, capture.readouterr()


def outputs(capture, *argv):
    """(exit code, stdout, stderr) of one command, for tests that compare the texts."""
    code, out = task(capture, *argv)
    return code, out.out, out.err


def run_failing(capture, *argv):
    """(exit code, captured output) of a command that must fail."""
    code, out = task(capture, *argv)
    if not code:
        raise AssertionError(f"b2dkit {' '.join(argv)} succeeded; expected a failure\n{out.out}{out.err}")
    return code, out
