"""The check both real-client bucket tests make (tests/test_imagenet_gcs.py with gcsfs,
tests/test_imagenet_s3.py with s3fs): a bucket copy of a 3-class generated folder reads exactly
like the local folder."""

from __future__ import annotations

import numpy as np

from workers import imagenet as I


def assert_bucket_reads_like_local(url: str, local: str) -> None:
    """``url`` (a bucket copy of the local folder ``local``: 3 classes, 12 training and 6 val
    images) passes the pre-flight, scans to the same classes, labels and paths, and gives the
    same training and eval batches (8x8, batch 4) as ``local``, array for array."""
    I.check_data_dir(url)
    tr_r, tr_l = I.scan_split(url, "train", num_classes=3), I.scan_split(local, "train")
    va_r, va_l = I.scan_split(url, "val", classes=tr_r.classes), I.scan_split(local, "val")
    assert tr_r.classes == tr_l.classes and len(tr_r) == 12 and len(va_r) == 6
    np.testing.assert_array_equal(tr_r.labels, tr_l.labels)
    assert [p.replace(url, local, 1) for p in tr_r.paths] == list(tr_l.paths)
    kw = dict(image_size=8, batch_size=4, seed=3, epochs=1)
    idx = np.arange(len(tr_l))
    rem, loc = I.train_pipeline(tr_r, idx, **kw), I.train_pipeline(tr_l, idx, **kw)
    assert len(rem) == len(loc) > 0
    for s in range(len(loc)):
        np.testing.assert_array_equal(rem[s]["image"], loc[s]["image"])
        np.testing.assert_array_equal(rem[s]["label"], loc[s]["label"])
    ev_r = I.eval_pipeline(va_r, image_size=8, batch_size=4)
    ev_l = I.eval_pipeline(va_l, image_size=8, batch_size=4)
    assert len(ev_r) == len(ev_l) > 0
    for s in range(len(ev_l)):
        np.testing.assert_array_equal(ev_r[s]["image"], ev_l[s]["image"])
        np.testing.assert_array_equal(ev_r[s]["label"], ev_l[s]["label"])
