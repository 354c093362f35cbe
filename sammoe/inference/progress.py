"""How a prediction shows its progress, one target at a time: a bar on a terminal (stderr), or a function of
the caller's, called after each target (``sammoe segment`` prints a line per target where stderr is a log or a
pipe, in which a bar is noise between the result lines)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from sammoe.errors import ConfigError

Report = Callable[[int, int, Any], None]  # (targets done, targets in all, the TargetResult just made)


class TargetProgress:
    """``progress``: True (a bar, only on a terminal), False (nothing) or a ``Report`` function."""

    def __init__(self, total: int, progress: bool | Report) -> None:
        if not (isinstance(progress, bool) or callable(progress)):
            raise ConfigError(
                f"progress={progress!r}: give True (a bar on a terminal), False or a function "
                "(done, total, result)"
            )
        self.total, self.done = int(total), 0
        self._report = None if isinstance(progress, bool) else progress
        self._bar = None
        if progress is True and total > 0 and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="target", file=sys.stderr, leave=False)

    def update(self, result: Any) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(1)
        if self._report is not None:
            self._report(self.done, self.total, result)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
