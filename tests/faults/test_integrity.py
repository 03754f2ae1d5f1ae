"""Integrity under faults: nothing stale or foreign is served silently (tiles, data caches),
and no silent fallback hides damage (config_json, history, fit segments, code_version)."""

from __future__ import annotations

import io
import os

import numpy as np
from conftest import write_image_folder

from workers.data import load_cifar10


# ====================================================================== data fingerprint
def test_image_rewritten_in_place_is_reread(tmp_path):
    """Rewriting one image in place (same name, same folder entry count, folder mtime kept)
    must invalidate the prepared cache: the new pixels are served, nothing stale."""
    from PIL import Image

    root = tmp_path / "imgs"
    write_image_folder(root, n_train=2, n_test=1)
    cache = tmp_path / "cache"
    before = load_cifar10(root, cache)
    cls_dir = root / "test" / "airplane"
    dir_st = cls_dir.stat()
    new = np.full((32, 32, 3), 7, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(new).save(buf, format="PNG")
    (cls_dir / "0000.png").write_bytes(buf.getvalue())
    os.utime(cls_dir, ns=(dir_st.st_atime_ns, dir_st.st_mtime_ns))  # folder time unchanged
    after = load_cifar10(root, cache)
    i = int(np.flatnonzero(after.labels_test == 0)[0])
    assert not np.array_equal(before.x_test[i], new)
    np.testing.assert_array_equal(after.x_test[i], new)
    # nothing else changed
    mask = np.arange(len(after.x_test)) != i
    np.testing.assert_array_equal(after.x_test[mask], before.x_test[mask])
