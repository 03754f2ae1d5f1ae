"""Claims on kernel tiles: one computation per tile, however many cells want it at once.

The gap, lap4 and lap8 cells of one transform (and any cells whose tiles have equal keys,
tiles.tile_key) share their tiles through the tile cache. When Tune starts them together, each
would find the cache empty and compute every tile itself: three propagations where one is
needed. Before computing a tile, a mapper claims it: the file ``<tiles>/<key>.claim``, created
only if absent (link() of a written file on a local or NFS file system; on an object store a
write read back
after ``settle_s``, a best effort like the driver lock's, driver_lock.py). A mapper that finds
a tile claimed waits for it to appear in the cache instead of computing it.

A claim names its holder (host, pid, a token) and a heartbeat its holder refreshes every
`REFRESH_S` while it computes. A claim whose holder is dead (this host: its pid has ended) or
hung (no heartbeat for `STALE_S`, on any host), or that is released without a result (the
holder failed or was stopped), is taken over by a waiting mapper (one: the one that creates
the takeover mark), so a tile is never lost. A tile is computed twice only when a live holder
stalls for more than `STALE_S`, or on an object store when two mappers claim it in the same
instant (then both results are equal and the second write replaces the first).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

import pyarrow.fs as pafs

from orchestrator.driver_lock import lock_is_live
from orchestrator.fsio import is_local, write_atomic

REFRESH_S = 60.0  # a holder rewrites its claims' heartbeat this often
STALE_S = 600.0  # a claim on another host with no heartbeat for this long is taken over


class TileClaims:
    """The claims of one mapper (one ``token``) on tiles under ``directory`` of ``fs``."""

    def __init__(self, fs: pafs.FileSystem, directory: str) -> None:
        self.fs, self.dir = fs, directory
        self.token = uuid.uuid4().hex
        self.mine: set[str] = set()
        self.taken_over = 0  # claims of dead or vanished holders this mapper took
        self._refreshed = time.monotonic()
        self._lock = threading.Lock()  # release (writer threads) vs refresh (the mapper)

    def _path(self, key: str) -> str:
        return f"{self.dir}/{key}.claim"

    def _record(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                           "token": self.token, "heartbeat": time.time()}).encode()

    def holder(self, key: str) -> dict[str, Any] | None:
        """The claim on ``key`` (host, pid, token, heartbeat), None when there is none. A claim
        that does not parse (cut short) reads as a claim of no live holder ({})."""
        return self._read(self._path(key))

    def _read(self, path: str) -> dict[str, Any] | None:
        try:
            with self.fs.open_input_stream(path) as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        try:
            rec = json.loads(raw.decode())
            return rec if isinstance(rec, dict) else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {}

    @staticmethod
    def live(rec: dict[str, Any]) -> bool:
        """Whether a claim's holder may still deliver: a heartbeat newer than `STALE_S` (a
        holder refreshes it every `REFRESH_S`; one that stopped is hung) and, on this host,
        its process alive."""
        try:
            fresh = time.time() - float(rec.get("heartbeat", 0)) < STALE_S
        except (TypeError, ValueError):
            return False
        return fresh and lock_is_live(rec, STALE_S)

    def _create(self, path: str) -> bool:
        """Create ``path`` holding our record, only if absent; True when created."""
        if not is_local(self.fs):  # object stores: write, read back (a race costs a tile)
            if self._read(path) is not None:
                return False
            write_atomic(self.fs, path, self._record())
            return (self._read(path) or {}).get("token") == self.token
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # created whole or not at all: the record goes to a private file first, then link()
        # makes it the claim only if none exists (an O_EXCL file is empty for an instant and
        # would read as a damaged claim to take over)
        tmp = f"{path}.{self.token}.tmp"
        with open(tmp, "wb") as f:
            f.write(self._record())
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here (some FUSE mounts): O_EXCL, then the record
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(self._record())
            return True
        finally:
            os.unlink(tmp)

    def claim(self, key: str) -> bool:
        """Claim ``key`` for this mapper: True when it is ours now (also after taking over a
        dead, hung or damaged holder's claim), False while another live mapper holds it."""
        path = self._path(key)
        if self._create(path):
            self.mine.add(key)
            return True
        rec = self.holder(key)
        if rec is None:  # released meanwhile
            if self._create(path):
                self.mine.add(key)
                return True
            return False
        if rec.get("token") == self.token:
            return True
        if self.live(rec) or (not rec and self._young(path)):
            return False
        # a dead holder's claim: one mapper takes it over, the one that creates the takeover
        # mark for that holder's token (two that both deleted and re-created the claim would
        # both hold the tile)
        mark = f"{path}.takeover-{rec.get('token') or 'damaged'}"
        if not self._create(mark):
            if self._young(mark):
                return False
            self._delete(mark)  # a takeover that died half-way: try again later
            return False
        try:
            if self.holder(key) == rec:
                self._delete(path)
                self.taken_over += 1
            if self._create(path):
                self.mine.add(key)
                return True
            return False
        finally:
            self._delete(mark)

    def _young(self, path: str) -> bool:
        """Written in the last 30 s (a claim or mark still being created or taken over)."""
        info = self.fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound or info.mtime is None:
            return False
        return time.time() - info.mtime.timestamp() < 30.0

    def _delete(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass

    def release(self, key: str) -> None:
        """Remove this mapper's claim on ``key`` (after its tile is in the cache, or when it
        gives the tile up); another's claim is left alone."""
        with self._lock:
            self.mine.discard(key)
            if (self.holder(key) or {}).get("token") == self.token:
                self._delete(self._path(key))

    def refresh(self, force: bool = False) -> None:
        """Rewrite the heartbeat of this mapper's claims (at most every `REFRESH_S`)."""
        if not force and time.monotonic() - self._refreshed < REFRESH_S:
            return
        self._refreshed = time.monotonic()
        for key in list(self.mine):
            with self._lock:  # never after its release: that would leave it behind
                if key not in self.mine:
                    continue
                if (self.holder(key) or {}).get("token") != self.token:  # taken over
                    self.mine.discard(key)
                    continue
                write_atomic(self.fs, self._path(key), self._record())

    def release_all(self) -> None:
        for key in list(self.mine):
            self.release(key)


__all__ = ["REFRESH_S", "STALE_S", "TileClaims"]
