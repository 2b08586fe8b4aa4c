"""How the ``valley`` command reports a failure: one line and an exit status, or the traceback with ``--debug``.

Exit statuses: ``0`` success; ``1`` a check failed (e.g. a theory check) or an internal error (a bug: the line says
so and suggests ``--debug``); ``2`` a mistake in the command (a wrong name, option or value, an input file that
cannot be read, an output path valley refuses, a size that cannot fit in memory); ``130`` interrupted (Ctrl-C).

What counts as the user's mistake (:func:`describe`):

* :class:`UserError` anywhere — raised where valley turns a library's low-level failure into a sentence, e.g. a
  checkpoint that torch cannot unpickle or a data file whose header lies;
* a ``ValueError`` raised by valley's own code (its argument checks: ``Invalid lr``, ``Unknown model``, ...) and
  :class:`landscape.files.OutputPathError`;
* a ``FloatingPointError`` raised by valley's own code (a curvature estimate refused because the loss is not
  finite at the weights and data given);
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
from collections.abc import Callable, Iterator
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
    ours = _raised_by_valley(error.__traceback__)
    if isinstance(error, UserError) or (isinstance(error, (ValueError, FloatingPointError)) and ours):
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


IMPORT_POLL_S = 0.02
"""How often a Ctrl-C held back during an import checks whether the main thread has left the import."""


@contextmanager
def watching_interrupts(notice: Callable[[], str] | None = None) -> Iterator[threading.Event]:
    """Record every Ctrl-C (SIGINT) that arrives inside the block in the returned event, then raise as usual.

    A Ctrl-C that lands inside an import is held back until the import is over: raised there, a
    ``KeyboardInterrupt`` can pass through the C++ of an extension being initialised, which then aborts the whole
    process (torch: "terminate called after throwing an instance of 'pybind11::error_already_set'"), or be
    swallowed on the way up and leave a half-imported module behind that fails later with an unrelated error
    (``AttributeError``, ``RecursionError``). A watcher thread looks at the main thread's stack every
    :data:`IMPORT_POLL_S` seconds and, once no import is running, sends it the signal again, once (delivered to
    the main thread, it also cuts a wait short). A second Ctrl-C while one is held back is raised at once, so an
    import that never ends can still be interrupted. The event lets the command report a failure that follows a
    swallowed interrupt as the interruption it is. Installed only where Python's own Ctrl-C handler is in place
    (main thread, SIGINT not ignored); restored on exit, after the watcher has stopped. Without
    ``signal.pthread_kill`` (Windows) nothing is held back.

    Args:
        notice: the line the watcher prints on stderr the first time it holds a Ctrl-C back (the wait lasts as long
            as the import, seconds while torch loads); ``None`` prints nothing.
    """
    received = threading.Event()
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield received
        return
    held = _HeldInterrupt(notice)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        received.set()
        if held.closing:  # the block is being left: the command is already ending
            return
        if held.sent:  # the watcher's delivery of a held Ctrl-C
            held.sent = False
            if not held.waiting:  # that Ctrl-C was raised meanwhile (pressed again)
                return
        elif held.waiting:  # pressed again while one is held back: at once
            held.waiting = False
            raise KeyboardInterrupt
        held.waiting = False
        if hasattr(signal, "pthread_kill") and _importing(frame):
            held.hold()
            return
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    try:
        yield received
    finally:
        held.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)


class _HeldInterrupt:
    """A Ctrl-C held back during an import; a watcher thread sends it to the main thread again once it is over.

    ``waiting``: a Ctrl-C is held back; ``sent``: the watcher has sent it again; ``closing``: the block is left.
    Each hold has its own watcher, which gives up once its hold is no longer the current one.
    """

    def __init__(self, notice: Callable[[], str] | None) -> None:
        self.notice = notice
        self.main = threading.main_thread().ident
        self.waiting = self.sent = self.closing = False
        self._holds = 0
        self._watcher: threading.Thread | None = None

    def hold(self) -> None:
        """Hold a Ctrl-C back and start a watcher for it."""
        self.waiting = True
        self._holds += 1
        self._watcher = threading.Thread(
            target=self._watch, args=(self._holds,), name="valley-held-interrupt", daemon=True
        )
        self._watcher.start()

    def _watch(self, hold: int) -> None:
        if self.notice is not None and hold == 1:  # printed here, not in the handler: a write it cut would fail
            print(self.notice(), file=sys.stderr, flush=True)
        while self.waiting and self._holds == hold and not self.closing:
            frame = sys._current_frames().get(self.main)
            if frame is None:
                return
            if not _importing(frame):
                self.sent = True
                signal.pthread_kill(self.main, signal.SIGINT)
                return
            time.sleep(IMPORT_POLL_S)

    def close(self) -> None:
        """Stop the watcher; a signal it has already sent finds ``closing`` set and is dropped."""
        self.closing = True
        if self._watcher is not None:
            self._watcher.join()


def _importing(frame: FrameType | None) -> bool:
    """Whether ``frame`` or one of its callers is the import machinery's (a module's code being run)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False
