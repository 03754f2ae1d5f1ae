"""Files under a results root, local or remote: opening the root and writing atomically.

Every file symsweep writes under a results root (Parquet parts, the manifest, the driver lock,
kernel tiles, predictions, checkpoint manifests) goes through `write_atomic`: the bytes go to a
hidden temporary name in the same directory, which is then renamed, so a reader never sees
half a file and two writers never share one. On object stores (s3://, gs://) pyarrow's rename
is a copy and a delete; the object only appears once complete, which is what readers need.

On a local disk the write is also durable (`workers.durable`): the temporary file is fsynced
before the rename and its directory after, so a power loss or a node crash never leaves a
zero-length or missing file under the final name.
"""

from __future__ import annotations

import errno
import os
import uuid

import pyarrow.fs as pafs

from workers.durable import (
    disk_full,
    free_bytes,
    fsync_dir,
    fsync_file,
    human_bytes,
    makedirs_durably,
    replace_durably,
    write_bytes_durably,
)
from workers.errors import ConfigError, DiskFullError


def resolve_root(root: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, base path) for a results root: a local path (made absolute) or a URI.

    Raises ConfigError (one line, naming the fix) when pyarrow cannot open the URI."""
    if "://" in root:
        try:
            return pafs.FileSystem.from_uri(root)
        except Exception as ex:
            raise ConfigError(f"--results {root!r}: pyarrow cannot open it ({ex}); use a "
                              "local directory or an s3:// / gs:// URI") from ex
    path = os.path.abspath(os.path.expanduser(root))
    return pafs.LocalFileSystem(), path


def is_local(fs: pafs.FileSystem) -> bool:
    """True for the local file system (the one where fsync means something)."""
    return isinstance(fs, pafs.LocalFileSystem)


def write_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` on ``fs`` (parent directories created) through a hidden
    temporary name and a rename; returns ``path``. Locally the temporary file is fsynced before
    the rename and the directory after (durable across a power loss). On any failure (e.g.
    OSError: ``path`` is a directory, a parent is a file, no permission, ENOSPC) the temporary
    file is removed and the error re-raised: nothing half-written stays behind."""
    d, name = path.rsplit("/", 1)
    local = is_local(fs)
    if local:
        makedirs_durably(d)
    else:
        fs.create_dir(d, recursive=True)
    tmp = f"{d}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        if local:
            write_bytes_durably(tmp, data)
            replace_durably(tmp, path)
        else:
            with fs.open_output_stream(tmp) as f:
                f.write(data)
            fs.move(tmp, path)
    except BaseException:  # Ctrl-C too: never leave the hidden temporary behind
        try:
            if fs.get_file_info(tmp).type == pafs.FileType.File:
                fs.delete_file(tmp)
        except OSError as ex:  # the original error is the one to report; say this one too
            ex.add_note(f"(could not remove the temporary {tmp}: {ex})")
        raise
    return path


def sync_written(fs: pafs.FileSystem, paths: list[str], directory: str | None = None) -> None:
    """Make files written without `write_atomic` durable before a manifest names them (local
    file system only; a no-op on object stores): fsync each of ``paths``, then ``directory``."""
    if not is_local(fs):
        return
    for p in paths:
        fsync_file(p)
    if directory is not None:
        fsync_dir(directory)


def disk_full_error(ex: BaseException, results: str, sweep: str | None = None
                    ) -> DiskFullError | None:
    """A `DiskFullError` (one line: the full folder, its free space, the fix) when ``ex`` is
    or wraps ENOSPC / EDQUOT, else None. The folder is the failing file's when the error names
    it; otherwise the fullest of the places a run writes: the results root (parts, checkpoints,
    tiles, MLflow's SQLite file), the temporary folder and Ray's temporary folder. ``sweep``
    None: the error of a command other than a run (no resume hint)."""
    if isinstance(ex, DiskFullError):
        return ex
    full = disk_full(ex)
    if full is None:
        return None
    import tempfile

    fname = getattr(full, "filename", None)
    fname = fname if isinstance(fname, str) else None
    if fname:
        folder = os.path.dirname(os.path.abspath(fname))
    else:
        places = [results, tempfile.gettempdir(), os.environ.get("RAY_TMPDIR", "/tmp/ray")]
        local = [p for p in places if "://" not in p]
        folder = min(local, key=lambda p: free_bytes(p) or 0) if local else results
    quota = getattr(full, "errno", None) == errno.EDQUOT or "quota" in str(full).lower()
    what = "quota exceeded" if quota else "no space left on device"
    where = f"{what} in {folder} ({human_bytes(free_bytes(folder))} free)"
    if sweep is None:  # a command other than a run: nothing of it was kept
        return DiskFullError(f"{where}; free space there and run the command again")
    return DiskFullError(
        f"{where}: the run stopped, nothing was retried; free space there, then `symsweep "
        f"resume {sweep} --results {results}` continues (finished trials are kept)")
