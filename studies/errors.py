"""How the ``valley`` command reports a failure: one line and an exit status, or the traceback with ``--debug``.

Exit statuses: ``0`` success; ``1`` a check failed (e.g. a theory check) or an internal error (a bug: the line says
so and suggests ``--debug``); ``2`` a mistake in the command (a wrong name, option or value, an input file that
cannot be read, an output path valley refuses, a size that cannot fit in memory); ``130`` interrupted (Ctrl-C).

What counts as the user's mistake (:func:`describe`):

* :class:`UserError` anywhere — raised where valley turns a library's low-level failure into a sentence, e.g. a
  checkpoint that torch cannot unpickle or a data file whose header lies;
* a ``ValueError`` raised by valley's own code (its argument checks: ``Invalid lr``, ``Unknown model``, ...) and
  :class:`landscape.files.OutputPathError`;
* an ``OSError`` (a missing, unreadable or unwritable file or folder, a full disk);
* a ``MemoryError`` (the sizes asked for do not fit).

Anything else — a ``TypeError``, a ``KeyError``, or a ``ValueError`` raised inside torch, numpy or pandas — is not
disguised as a user error: it is reported as an internal error with exit status 1.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, TracebackType

#: Exit statuses of the ``valley`` command.
OK, FAILED, USER_ERROR, INTERRUPTED = 0, 1, 2, 130

_PACKAGES = ("optim", "landscape", "theory", "studies", "paper_figures")
_ROOT = Path(__file__).resolve().parent.parent


class UserError(ValueError):
    """A mistake in what the user asked for; the ``valley`` command prints the message as one line and exits 2."""


def _raised_by_valley(traceback: TracebackType | None) -> bool:
    """Whether the innermost frame of ``traceback`` is in one of valley's packages (not torch, numpy, ...)."""
    last = None
    while traceback is not None:
        last, traceback = traceback, traceback.tb_next
    if last is None:
        return False
    path = Path(last.tb_frame.f_code.co_filename).resolve()
    return any(path.is_relative_to(_ROOT / package) for package in _PACKAGES)


def one_line(message: str) -> str:
    """``message`` with its line breaks and runs of white space folded into single spaces."""
    return " ".join(message.split())


def describe(error: BaseException) -> tuple[int, str]:
    """The exit status and the one-line message for an exception that ended a ``valley`` command."""
    text = one_line(str(error))
    if isinstance(error, UserError) or (isinstance(error, ValueError) and _raised_by_valley(error.__traceback__)):
        return USER_ERROR, f"error: {text}"
    if isinstance(error, OSError):
        where = f": {error.filename}" if error.filename and str(error.filename) not in text else ""
        return USER_ERROR, f"error: {text or type(error).__name__}{where}"
    if isinstance(error, MemoryError):
        detail = f" ({text})" if text else ""
        return USER_ERROR, f"error: out of memory{detail}; ask for less (a smaller grid, fewer samples or batch size)"
    return FAILED, (
        f"internal error (a bug in valley, not a mistake in the command): {type(error).__name__}: {text}; "
        "run again with --debug for the traceback and please report it"
    )


def report(prog: str, error: BaseException) -> int:
    """Print ``prog: <one line>`` for ``error`` on stderr and return the exit status."""
    status, message = describe(error)
    print(f"{prog}: {message}", file=sys.stderr)
    return status


IMPORT_RETRY_S = 0.05
"""Delay after which a Ctrl-C deferred because it landed inside an import is delivered again."""
IMPORT_PATIENCE_S = 3.0
"""Longest a Ctrl-C waits for an import to finish (a stuck import is interrupted all the same)."""


@contextmanager
def watching_interrupts() -> Iterator[threading.Event]:
    """Record every Ctrl-C (SIGINT) that arrives inside the block in the returned event, then raise as usual.

    A Ctrl-C that lands inside an import is deferred until the import is over (the signal is sent again to the
    main thread every :data:`IMPORT_RETRY_S` seconds, for at most :data:`IMPORT_PATIENCE_S`): raised there, a
    ``KeyboardInterrupt`` can pass through the C++ of an extension being initialised, which then aborts the whole
    process (torch: "terminate called after throwing an instance of 'pybind11::error_already_set'"), or be
    swallowed on the way up and leave a half-imported module behind that fails later with an unrelated error
    (``AttributeError``, ``RecursionError``). The event lets the command report such a failure as the interruption
    it is. Installed only where Python's own Ctrl-C handler is in place (main thread, SIGINT not ignored);
    restored on exit, with any pending re-delivery cancelled.
    """
    received = threading.Event()
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield received
        return
    retries: list[threading.Timer] = []
    deferred_since: list[float] = []

    def interrupt(signum: int, frame: FrameType | None) -> None:
        received.set()
        deferred_since[:] = deferred_since or [time.monotonic()]
        patient = time.monotonic() - deferred_since[0] < IMPORT_PATIENCE_S
        if patient and hasattr(signal, "pthread_kill") and _importing(frame):  # (no pthread_kill on Windows)
            main = threading.main_thread().ident  # delivered to it, the signal also cuts short a wait (sleep)
            retry = threading.Timer(IMPORT_RETRY_S, signal.pthread_kill, (main, signal.SIGINT))
            retry.daemon = True
            retries.append(retry)
            retry.start()
            return
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    try:
        yield received
    finally:
        for retry in retries:
            retry.cancel()
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _importing(frame: FrameType | None) -> bool:
    """Whether ``frame`` or one of its callers is the import machinery's (a module's code being run)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False
