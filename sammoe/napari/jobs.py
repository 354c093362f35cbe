"""Model calls off the GUI thread, one at a time and in order (the Predictor is not thread-safe).

A job is a generator function: what it yields is a progress message, what it returns goes to ``done`` on the
GUI thread (napari's worker ``returned`` signal), which is the only place layers are touched. A
``SammoeError`` becomes its one-line message and any other exception one line naming its type (the
traceback goes to the log, never to the user); either way the next queued job still runs.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from napari.qt.threading import create_worker

from sammoe.errors import SammoeError

log = logging.getLogger(__name__)
Work = Callable[[], Generator[str, None, Any]]


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    message = text[0] if text else ""
    if isinstance(err, SammoeError):
        return message or type(err).__name__
    return f"unexpected error ({type(err).__name__}{': ' + message if message else ''}); see the log"


@dataclass(frozen=True)
class _Outcome:
    value: Any = None
    error: str | None = None


def _guarded(work: Work, setup: Callable[[], Any]) -> Callable[[], Generator[str, None, _Outcome]]:
    def run() -> Generator[str, None, _Outcome]:
        try:
            setup()
            value = yield from work()
        except Exception as err:  # the worker must never raise: napari would print the traceback
            if not isinstance(err, SammoeError):
                log.exception("sammoe napari job failed")
            return _Outcome(error=one_line(err))
        return _Outcome(value=value)

    return run


class Jobs:
    """A queue of jobs run one after another in napari worker threads; ``setup`` runs in the worker before
    each job (the widget pins torch's threads there)."""

    def __init__(
        self,
        on_progress: Callable[[str | None], None],
        on_error: Callable[[str], None],
        on_idle: Callable[[], None] = lambda: None,
        setup: Callable[[], Any] = lambda: None,
    ) -> None:
        self._setup = setup
        self._on_progress = on_progress
        self._on_error = on_error
        self._on_idle = on_idle
        self._queue: deque[tuple[Work, Callable[[Any], None]]] = deque()
        self._worker: Any = None

    @property
    def busy(self) -> bool:
        return self._worker is not None or bool(self._queue)

    def submit(self, work: Work, done: Callable[[Any], None]) -> None:
        self._queue.append((work, done))
        if self._worker is None:
            self._next()

    def _next(self) -> None:
        if not self._queue:
            self._worker = None
            self._on_progress(None)
            self._on_idle()
            return
        work, done = self._queue.popleft()
        worker = create_worker(_guarded(work, self._setup), _start_thread=False)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda outcome: self._finish(outcome, done))
        self._worker = worker
        worker.start()

    def _finish(self, outcome: _Outcome, done: Callable[[Any], None]) -> None:
        try:
            if outcome.error is not None:
                self._on_error(outcome.error)
            else:
                done(outcome.value)
        except Exception as err:  # a GUI handler failing must not stall the queue
            log.exception("sammoe napari handler failed")
            self._on_error(one_line(err))
        finally:
            self._next()
