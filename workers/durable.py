"""Durable local files: fsync before a rename, fsync the directory after, tell a full disk.

A rename makes a new file appear whole to readers, but without an ``fsync`` of the file first
the kernel may put the rename on disk before the data: after a power loss or a node crash the
name can point at a zero-length or missing file. And the rename itself is only durable once
the directory holding it is synced (what SQLite and PostgreSQL do for their journals). So every
file symsweep writes to a local disk goes: temporary name, write, ``fsync(file)``,
``os.replace``, ``fsync(directory)`` (`replace_durably`). Object stores need none of this: an
object appears once complete, or not at all.

`disk_full` recognises a full disk or a spent quota (ENOSPC / EDQUOT) anywhere in an exception's
chain, so the driver can stop a run at once instead of retrying trials against it.
"""

from __future__ import annotations

import errno
import os
import shutil

from workers.errors import DiskFullError

# errno values of "no room to write": a full file system, and a user's or project's quota
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def fsync_file(path: str) -> None:
    """Flush ``path``'s data and metadata to the device (``fsync``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Make the entries of directory ``path`` (a rename, a new file) durable. A file system that
    cannot sync a directory (EINVAL, e.g. some network mounts) is left as it is: there the
    rename is as durable as that file system makes it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as ex:
        if ex.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def makedirs_durably(path: str) -> None:
    """``os.makedirs(path, exist_ok=True)``, then fsync the parent of every directory it
    created, so the new directories survive a crash along with what is renamed into them."""
    missing = []
    p = os.path.abspath(path)
    while not os.path.isdir(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    if not missing:
        return
    os.makedirs(path, exist_ok=True)
    for d in reversed(missing):
        fsync_dir(os.path.dirname(d))


def write_bytes_durably(path: str, data: bytes) -> None:
    """Write ``data`` to the (temporary) file ``path`` and fsync it; no rename."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def replace_durably(tmp: str, dest: str) -> None:
    """``os.replace(tmp, dest)`` for a file or directory whose contents are already synced,
    then fsync the directory holding ``dest`` (and that of ``tmp`` when it differs)."""
    os.replace(tmp, dest)
    fsync_dir(os.path.dirname(os.path.abspath(dest)))
    src_dir = os.path.dirname(os.path.abspath(tmp))
    if src_dir != os.path.dirname(os.path.abspath(dest)):
        fsync_dir(src_dir)


def fsync_tree(path: str) -> None:
    """fsync every file and directory under ``path`` (a directory about to be renamed into
    place, e.g. a checkpoint written file by file)."""
    for dirpath, _, filenames in os.walk(path):
        for fn in filenames:
            fsync_file(os.path.join(dirpath, fn))
        fsync_dir(dirpath)


# what SQLite (MLflow's store) says instead of an errno
_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "database or disk is full")


def disk_full(ex: BaseException | None) -> BaseException | None:
    """The error in ``ex``'s chain (itself, its ``__cause__`` / ``__context__``, a Ray task
    error's ``cause``) that says the disk is full or the quota spent: an OSError with errno
    ENOSPC or EDQUOT, pyarrow's file errors (``[Errno 28] Error writing bytes to file``),
    SQLite's ``database or disk is full``; else None."""
    seen: set[int] = set()
    stack = [ex]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen or len(seen) > 50:
            continue
        seen.add(id(e))
        if isinstance(e, DiskFullError) or (isinstance(e, OSError) and e.errno in FULL_ERRNOS) or \
                any(t in str(e) for t in _FULL_TEXTS):
            return e
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return None


def free_bytes(path: str) -> int | None:
    """Bytes free for this user on the file system holding ``path`` (its nearest existing
    ancestor), None when that cannot be asked (e.g. an object store URI)."""
    if "://" in path:
        return None
    p = os.path.abspath(path)
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def human_bytes(n: int | None) -> str:
    """``1.5 MB`` style (decimal units), ``unknown`` for None."""
    if n is None:
        return "unknown"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"
