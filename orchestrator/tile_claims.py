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
`REFRESH_S` while it computes. A claim whose holder is dead (same host: its pid; elsewhere:
no heartbeat for `STALE_S`) or that is released without a result (the holder failed or was
stopped) is taken over by a waiting mapper, so a tile is never lost. A tile is computed twice
only when a live holder stalls for more than `STALE_S` (then both results are equal and the
second write replaces the first).
"""

from __future__ import annotations

import json
import os
import socket
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

    def __init__(self, fs: pafs.FileSystem, directory: str, settle_s: float = 1.0) -> None:
        self.fs, self.dir, self.settle_s = fs, directory, settle_s
        self.token = uuid.uuid4().hex
        self.mine: set[str] = set()
        self.taken_over = 0  # claims of dead or vanished holders this mapper took
        self._refreshed = time.monotonic()

    def _path(self, key: str) -> str:
        return f"{self.dir}/{key}.claim"

    def _record(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                           "token": self.token, "heartbeat": time.time()}).encode()

    def holder(self, key: str) -> dict[str, Any] | None:
        """The claim on ``key`` (host, pid, token, heartbeat), None when there is none. A claim
        that does not parse (cut short) reads as a claim of no live holder."""
        try:
            with self.fs.open_input_stream(self._path(key)) as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        try:
            rec = json.loads(raw.decode())
            return rec if isinstance(rec, dict) else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {}

    def _live(self, rec: dict[str, Any]) -> bool:
        return bool(rec) and lock_is_live(rec, STALE_S)

    def claim(self, key: str) -> bool:
        """Claim ``key`` for this mapper: True when it is ours now (also after taking over a
        dead holder's claim), False while another live mapper holds it."""
        path = self._path(key)
        for _ in range(2):
            if is_local(self.fs):
                # created whole or not at all: the record goes to a private file first, then
                # link() makes it the claim only if none exists (an O_EXCL file would be empty
                # for an instant, and read as a damaged claim to take over)
                os.makedirs(self.dir, exist_ok=True)
                tmp = f"{path}.{self.token}.tmp"
                with open(tmp, "wb") as f:
                    f.write(self._record())
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    pass
                else:
                    self.mine.add(key)
                    return True
                finally:
                    os.unlink(tmp)
            else:
                if self.holder(key) is None:
                    write_atomic(self.fs, path, self._record())
                    time.sleep(self.settle_s)
                    if (self.holder(key) or {}).get("token") == self.token:
                        self.mine.add(key)
                        return True
            rec = self.holder(key)
            if rec is not None and (rec.get("token") == self.token or self._live(rec)):
                return rec.get("token") == self.token
            if rec is not None and self.holder(key) == rec:  # a dead holder's (or damaged)
                try:  # claim, unchanged since read: take it over
                    self.fs.delete_file(path)
                except FileNotFoundError:
                    pass
                self.taken_over += 1
        return False

    def release(self, key: str) -> None:
        """Remove this mapper's claim on ``key`` (after its tile is in the cache, or when it
        gives the tile up); another's claim is left alone."""
        self.mine.discard(key)
        if (self.holder(key) or {}).get("token") == self.token:
            try:
                self.fs.delete_file(self._path(key))
            except FileNotFoundError:
                pass

    def refresh(self, force: bool = False) -> None:
        """Rewrite the heartbeat of this mapper's claims (at most every `REFRESH_S`)."""
        if not force and time.monotonic() - self._refreshed < REFRESH_S:
            return
        self._refreshed = time.monotonic()
        for key in list(self.mine):
            if (self.holder(key) or {}).get("token") != self.token:  # taken over meanwhile
                self.mine.discard(key)
                continue
            write_atomic(self.fs, self._path(key), self._record())

    def release_all(self) -> None:
        for key in list(self.mine):
            self.release(key)


__all__ = ["REFRESH_S", "STALE_S", "TileClaims"]
