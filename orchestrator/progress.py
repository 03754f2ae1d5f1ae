"""The progress view of a running sweep: a Tune callback on the driver counting done /
running / failed / retried trials with an ETA, shown as a live table on a terminal and as
plain periodic log lines otherwise (SLURM, nohup, a pipe: issue 15 item 4). It also passes
each finished attempt to the driver's bookkeeping (``on_attempt_end``: the MLflow mirror,
`orchestrator.runner`) and says on the driver what a trial's results carry for it (corrupt
kernel tiles), since a trial's own log does not reach the driver.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ray.tune import Callback

from workers.vocab import Status

log = logging.getLogger("symsweep")

PROGRESS_LINE_S = 60.0  # a plain progress line at most this often (not a terminal)


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class ProgressCallback(Callback):  # type: ignore[misc]
    """Tune callback: counts done / running / failed / retried trials and the ETA.

    Shown as a live rich table when its console is a terminal, else (SLURM, nohup, a pipe) as
    plain timestamped log lines: one at the start, then at most every ``line_every_s``
    seconds as trials start and end, and one at the end. Titles and messages are never read
    as rich markup, so "fig2 [smoke]" stays as written."""

    def __init__(self, *, total: int, title: str, on_attempt_end: Callable[[str], None],
                 enabled: bool = True, console: Any = None,
                 line_every_s: float = PROGRESS_LINE_S):
        self.total = total
        self.title = title
        self.on_attempt_end = on_attempt_end
        self.enabled = enabled
        self.console = console
        self.line_every_s = line_every_s
        self.running: set[str] = set()
        self.done = 0
        self.failed = 0
        self.interrupted = 0  # ended by a stop request (stopping.py): not done, not failed
        self.retries = 0
        self.t0: float | None = None
        self._live: Any = None
        self._lines: Any = None  # the console plain lines go to (not a terminal)
        self._last_line = float("-inf")

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state; the driver-side hooks and the
        # live view stay behind.
        state = dict(self.__dict__)
        state.update(on_attempt_end=lambda _tid: None, console=None, _live=None, _lines=None)
        return state

    @staticmethod
    def _id(trial: Any) -> str:
        return trial.config["trial"]["trial_id"]

    def counts(self) -> dict[str, Any]:
        """done, running, failed, pending, retries, elapsed and ETA (H:MM:SS, '?' unknown)."""
        finished = self.done + self.failed
        el = time.time() - self.t0 if self.t0 else 0.0
        eta = _hms((self.total - finished) * el / finished) if finished and el > 0 else "?"
        out: dict[str, Any] = {"done": self.done, "running": len(self.running),
                               Status.FAILED: self.failed}
        if self.interrupted:
            out[Status.INTERRUPTED] = self.interrupted
        out.update(pending=self.total - finished - self.interrupted - len(self.running),
                   retries=self.retries, elapsed=_hms(el), ETA=eta)
        return out

    def render(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        c = self.counts()
        t = Table(title=Text(self.title), show_edge=False)  # Text: never parsed as markup
        for k in c:
            t.add_column(k, justify="right")
        t.add_row(*(str(v) for v in c.values()))
        return t

    def line(self) -> str:
        """One plain progress line: ``<UTC time> <title>: 3/10 done, 2 running, ...``."""
        c = self.counts()
        return (f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} {self.title}: "
                f"{c['done']}/{self.total} done, {c['running']} running, "
                f"{c[Status.FAILED]} failed, "
                f"{str(c[Status.INTERRUPTED]) + ' interrupted, ' if self.interrupted else ''}"
                f"{c['pending']} pending, {c['retries']} retries; elapsed {c['elapsed']}, "
                f"ETA {c['ETA']}")

    def _say_line(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._lines is not None and (force or now - self._last_line >= self.line_every_s):
            self._last_line = now
            self._lines.print(self.line(), markup=False, highlight=False, soft_wrap=True)

    def __enter__(self) -> ProgressCallback:
        if self.enabled:
            from rich.console import Console

            con = self.console if self.console is not None else Console()
            if con.is_terminal:
                from rich.live import Live

                self._live = Live(self.render(), console=con, refresh_per_second=2,
                                  transient=False)
                self._live.__enter__()
            else:
                self._lines = con
                self._say_line(force=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self.render())
            self._live.__exit__(*exc)
            self._live = None
        if self._lines is not None:
            self._say_line(force=True)
            self._lines = None

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.render())
        else:
            self._say_line()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.t0 is None:
            self.t0 = time.time()
        self.running.add(self._id(trial))
        self._refresh()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(self._id(trial))
        last = getattr(trial, "last_result", None) or {}
        if last.get(Status.INTERRUPTED):  # on a stop request: checkpointed, or never started
            self.interrupted += 0 if last.get("not_started") else 1
        else:
            self.done += 1
        self._end(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(self._id(trial))
        self.failed += 1
        self._end(trial)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.retries += 1
        self._end(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        # A trial's own log does not reach the driver (log_to_driver=False): what the driver
        # must say comes back in the trial's results.
        n = result.get("tiles_corrupt")
        if n:
            log.warning("trial %s: %s kernel tile(s) were corrupt or not their key's and were "
                        "recomputed: %s", self._id(trial), n,
                        result.get("tiles_corrupt_note") or "(no detail)")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._refresh()

    def _end(self, trial: Any) -> None:
        try:
            self.on_attempt_end(self._id(trial))
        except Exception as ex:  # never let bookkeeping kill the sweep
            log.warning("after trial %s: %s", self._id(trial), ex)
        self._refresh()
