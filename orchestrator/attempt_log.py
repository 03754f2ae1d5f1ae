"""One attempt's log, kept under the results root beside its row (`ResultsLayout.log`).

On a cluster an attempt's own output (its warnings, a skipped checkpoint, a data-loader note,
what a worker printed) lands in a Ray worker's log file on whichever node ran it, and goes with
the node at `ray down` or a scale-down. `AttemptLog` keeps a copy: while an attempt runs, the
records of Python's logging (INFO and above) and what the process writes to ``sys.stdout`` /
``sys.stderr`` go to their usual place *and* into a bounded buffer, which `trial.py` writes to
``<root>/<sweep>/logs/<trial_id>-a<n>.log`` just before the attempt's row (failed, interrupted
and completed attempts alike). `symsweep show TRIAL` prints where each log is and the end of
the latest one.

Bounded: the first `HEAD_BYTES` and the last `TAIL_BYTES` are kept, with a line saying how
much was cut between them, so a chatty worker costs at most ~0.5 MB per attempt. Output of C++
code writing to the file descriptors directly (XLA's own logs) is not captured; it stays in
Ray's worker log.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from typing import Any, TextIO

import pyarrow.fs as pafs

from orchestrator.fsio import write_atomic

HEAD_BYTES = 64 * 1024
TAIL_BYTES = 448 * 1024
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class BoundedText:
    """Text kept as its first ``head`` and last ``tail`` characters (thread-safe)."""

    def __init__(self, head: int = HEAD_BYTES, tail: int = TAIL_BYTES) -> None:
        self.head_max, self.tail_max = head, tail
        self._head: list[str] = []
        self._head_n = 0
        self._tail: deque[str] = deque()
        self._tail_n = 0
        self.cut = 0  # characters dropped between head and tail
        self._lock = threading.Lock()

    def write(self, s: str) -> int:
        n = len(s)
        with self._lock:
            room = self.head_max - self._head_n
            if room > 0:
                self._head.append(s[:room])
                self._head_n += min(len(s), room)
                s = s[room:]
            if s:
                self._tail.append(s)
                self._tail_n += len(s)
                while self._tail_n > self.tail_max:
                    first = self._tail[0]
                    over = self._tail_n - self.tail_max
                    if len(first) <= over:
                        self._tail.popleft()
                        self._tail_n -= len(first)
                        self.cut += len(first)
                    else:
                        self._tail[0] = first[over:]
                        self._tail_n -= over
                        self.cut += over
        return n

    def text(self) -> str:
        with self._lock:
            mid = (f"\n[... {self.cut} characters of this attempt's log cut here: the first "
                   f"{self.head_max} and the last {self.tail_max} are kept ...]\n"
                   if self.cut else "")
            return "".join(self._head) + mid + "".join(self._tail)


class _Tee:
    """A text stream writing to ``orig`` and to ``buf``."""

    def __init__(self, orig: TextIO, buf: BoundedText) -> None:
        self._orig, self._buf = orig, buf

    def write(self, s: str) -> int:
        self._buf.write(s)
        return self._orig.write(s)

    def flush(self) -> None:
        self._orig.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...: the original's
        return getattr(self._orig, name)


class AttemptLog:
    """While entered: logging records (INFO and above, every logger) and this process's
    Python-level stdout / stderr also go to `buf`. `save` writes it (atomically)."""

    def __init__(self) -> None:
        self.buf = BoundedText()
        self._handler = logging.StreamHandler(self.buf)  # type: ignore[arg-type]
        self._handler.setLevel(logging.INFO)
        self._handler.setFormatter(logging.Formatter(_FORMAT))
        self._saved: tuple[Any, ...] | None = None

    def __enter__(self) -> AttemptLog:
        ours = logging.getLogger("symsweep")
        self._saved = (sys.stdout, sys.stderr, ours.level)
        logging.getLogger().addHandler(self._handler)
        if ours.getEffectiveLevel() > logging.INFO:  # symsweep's own notes are INFO
            ours.setLevel(logging.INFO)
        sys.stdout = _Tee(sys.stdout, self.buf)  # type: ignore[assignment]
        sys.stderr = _Tee(sys.stderr, self.buf)  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: Any) -> None:
        logging.getLogger().removeHandler(self._handler)
        if self._saved is not None:
            sys.stdout, sys.stderr, level = self._saved
            logging.getLogger("symsweep").setLevel(level)
            self._saved = None

    def save(self, fs: pafs.FileSystem, path: str) -> str:
        """Write what was captured so far to ``path`` on ``fs``; returns ``path``."""
        self._handler.flush()
        return write_atomic(fs, path, self.buf.text().encode("utf-8", errors="replace"))
