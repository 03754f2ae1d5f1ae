"""Files under a results root, local or remote: opening the root and writing atomically.

Every file symsweep writes under a results root (Parquet parts, the manifest, the driver lock,
kernel tiles, predictions, checkpoint manifests) goes through `write_atomic`: the bytes go to a
hidden temporary name in the same directory, which is then renamed, so a reader never sees
half a file and two writers never share one. On object stores (s3://, gs://) pyarrow's rename
is a copy and a delete; the object only appears once complete, which is what readers need.
"""

from __future__ import annotations

import os
import uuid

import pyarrow.fs as pafs

from workers.errors import ConfigError


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


def write_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` on ``fs`` (parent directories created) through a hidden
    temporary name and a rename; returns ``path``. On any failure (e.g. OSError: ``path`` is a
    directory, a parent is a file, no permission) the temporary file is removed and the error
    re-raised: nothing half-written stays behind."""
    d, name = path.rsplit("/", 1)
    fs.create_dir(d, recursive=True)
    tmp = f"{d}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
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
