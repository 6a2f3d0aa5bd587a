"""The package's one progress bar.

On a terminal it is a tqdm bar (count, total, rate and ETA, live metrics as a postfix). When stdout is
not a terminal (CI logs, `nohup`, a notebook's captured output, tests) a redrawn bar would fill the log
with carriage returns, so the same information goes out as plain absl log lines instead, at most every
`log_interval_s` seconds plus one at the end:

    features:  40% 40/100 [00:12<00:18,  3.33batch/s, loss=0.513]

Use it as a context manager or wrap an iterable:

    with ProgressBar(total=steps, desc="train", unit="step") as bar:
        for step in range(steps):
            ...
            bar.update(1, loss=loss_value)

    for batch in track(dataset, total=n, desc="features", unit="batch"):
        ...
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Iterable, Iterator, Optional

from absl import logging
from tqdm import tqdm

_MODES = ("auto", "bar", "log")
# tqdm's own fields (count, percentage, elapsed<remaining = ETA, rate), without the drawn bar.
_LINE_WITH_TOTAL = "{desc}{percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_LINE_NO_TOTAL = "{desc}{n_fmt} [{elapsed}, {rate_fmt}{postfix}]"


def _is_terminal() -> bool:
    try:
        return sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def _format_metrics(metrics: dict) -> dict:
    return {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in metrics.items()}


class ProgressBar:
    """A progress bar with total and ETA (tqdm) on a terminal, periodic log lines otherwise.

    Args:
      total: expected number of units (None: unknown; then no percentage or ETA).
      desc: short label at the start of the line.
      unit: unit name (it, step, batch, ex).
      enabled: False makes every call a no-op.
      mode: "auto" (bar if stdout and stderr are terminals, else log lines), "bar" or "log".
      log_interval_s: minimum seconds between two log lines in log mode (the final line always goes out).
      log_fn: where log lines go (default absl `logging.info`; called as log_fn("%s", line)).
      leave: keep the finished bar on the terminal (bar mode).
    """

    def __init__(self, total: Optional[int] = None, desc: str = "", unit: str = "it", enabled: bool = True,
                 mode: str = "auto", log_interval_s: float = 30.0,
                 log_fn: Optional[Callable[..., Any]] = None, leave: bool = False):
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {list(_MODES)}, got {mode!r}")
        if total is not None and (isinstance(total, bool) or int(total) != total or total < 0):
            raise ValueError(f"total must be a non-negative int or None, got {total!r}")
        if not log_interval_s >= 0:
            raise ValueError(f"log_interval_s must be >= 0, got {log_interval_s!r}")
        self.total = None if total is None else int(total)
        self.desc, self.unit, self.enabled = desc, unit, bool(enabled)
        self.n = 0
        self.metrics: dict = {}
        self._log_fn = log_fn or logging.info
        self._interval = float(log_interval_s)
        self._start = time.monotonic()
        self._last_log = self._start
        self._logged_n = -1
        self._closed = False
        use_bar = mode == "bar" or (mode == "auto" and _is_terminal())
        self._bar = tqdm(total=self.total, desc=desc, unit=unit, dynamic_ncols=True, leave=leave) \
            if self.enabled and use_bar else None

    @property
    def mode(self) -> str:
        return "off" if not self.enabled else ("bar" if self._bar is not None else "log")

    def update(self, n: int = 1, **metrics) -> None:
        """Advances by `n` units; keyword metrics (loss=..., acc=...) are shown beside the count."""
        if not self.enabled or self._closed:
            return
        self.n += n
        if metrics:
            self.metrics.update(metrics)
        if self._bar is not None:
            if metrics:
                self._bar.set_postfix(_format_metrics(self.metrics), refresh=False)
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last_log >= self._interval:
            self._log(now)

    def line(self, now: Optional[float] = None) -> str:
        """The current state as one line (what log mode writes)."""
        now = time.monotonic() if now is None else now
        postfix = ", ".join(f"{k}={v}" for k, v in _format_metrics(self.metrics).items())
        prefix = f"{self.desc}: " if self.desc else ""
        return tqdm.format_meter(self.n, self.total, now - self._start, prefix=prefix, unit=self.unit,
                                 postfix=postfix or None,
                                 bar_format=_LINE_WITH_TOTAL if self.total else _LINE_NO_TOTAL)

    def _log(self, now: float) -> None:
        self._last_log = now
        self._logged_n = self.n
        self._log_fn("%s", self.line(now))

    def close(self) -> None:
        """Ends the bar (log mode: writes the final line unless it was just written)."""
        if self._closed or not self.enabled:
            self._closed = True
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._logged_n != self.n:
            self._log(time.monotonic())

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(iterable: Iterable, total: Optional[int] = None, desc: str = "", unit: str = "it",
             enabled: bool = True, **kwargs) -> Iterator:
    """Yields the items of `iterable` while a `ProgressBar` counts them (total from len() if known)."""
    if total is None and hasattr(iterable, "__len__"):
        try:
            total = len(iterable)
        except TypeError:  # e.g. a tf.data.Dataset of unknown cardinality
            total = None
    with ProgressBar(total=total, desc=desc, unit=unit, enabled=enabled, **kwargs) as bar:
        for item in iterable:
            yield item
            bar.update(1)
