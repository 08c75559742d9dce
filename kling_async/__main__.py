"""``python -m kling_async``, and the ``kling-async`` console script: the same command line.

The command's modules take about 0.4 s to import. A Ctrl-C then would show a ``KeyboardInterrupt``
traceback, so ``main`` first takes SIGINT over (this module imports next to nothing: the package's front
door is lazy), then imports the command, then gives SIGINT back before the command runs and follows
signals itself. A Ctrl-C in between ends the process as the command does: one line, exit code 130.
So does a SIGTERM, which would otherwise end it without a word.
"""

import os
import signal

_EXIT_INTERRUPTED = 130  # as the command's own (kling_async._cli.EXIT_INTERRUPTED, not imported yet)


def main() -> None:
    """Console entry point."""
    # SIGINT as Python left it (not when ignored: a background job; nor when whoever called us handles
    # it), and SIGTERM while it has its default action (death by the signal, with no word).
    taken = {
        signum: previous
        for signum, previous in (
            (signal.SIGINT, signal.default_int_handler),
            (signal.SIGTERM, signal.SIG_DFL),
        )
        if signal.getsignal(signum) is previous
    }
    try:
        for signum in taken:
            signal.signal(signum, _exit_interrupted)
    except ValueError:  # not the main thread: signals are not ours to handle
        taken = {}
    from . import _load
    from ._cli import main as run

    _load()  # the whole front door too, as an eager `import kling_async` left it (public __module__s)
    for signum, previous in taken.items():
        signal.signal(signum, previous)
    run()


def _exit_interrupted(signum: int, frame: object) -> None:
    """Ctrl-C (or SIGTERM) while the command loads: nothing has started, so one line and exit code 130,
    at once.

    Not ``raise SystemExit``: a handler can run where an exception is swallowed (an import lock's weakref
    callback printed "Exception ignored", then the command ran, exit 0), and unwinding half-imported
    extension modules crashed the interpreter's shutdown now and then. There is nothing to clean up yet.
    """
    try:
        os.write(2, b"interrupted\n")  # not sys.stderr, whose buffer may be mid-write
    finally:  # with no stderr too: the exit code says it
        os._exit(_EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
