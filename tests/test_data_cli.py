"""`symsweep data prepare|show` through the real entry point `orchestrator.cli.main`."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from orchestrator.cli import main
from orchestrator.data_cli import _display
from workers.data import build_dataset


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("symsweep: error:")]


def test_prepare_builds_cache_and_prints_counts(mini_cifar, tmp_path, capsys):
    cache = tmp_path / "cache"
    rc = main(
        ["data", "prepare", "--data-dir", str(mini_cifar["batches"]), "--cache-dir", str(cache)]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert (cache / "cifar10-official.npz").is_file()
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 5:
            rows[cells[0]] = cells[1:]
    # 100 official training images (labels i % 10): first 90% train, last 10% val; 20 test
    # images with labels 7 i % 10, two a class. Columns: train, val, test, train+val.
    assert rows["airplane"] == ["9", "1", "2", "10"]
    assert rows["total"] == ["90", "10", "20", "100"]
    assert "official order" in out


def test_prepare_without_data_or_network_is_one_line_exit_2(tmp_path, capsys):
    rc = main(["data", "prepare", "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert rc == 2
    lines = _error_lines(err)
    assert len(lines) == 1
    for needle in ("--data-dir", "cifar-10-python.tar.gz", "cifar-10-batches-py", "image folder"):
        assert needle in lines[0]
    assert "Traceback" not in err


def test_show_without_data_does_not_fall_back_to_synthetic(tmp_path, capsys):
    png = tmp_path / "t.png"
    rc = main(["data", "show", "--out", str(png), "--cache-dir", str(tmp_path / "cache")])
    lines = _error_lines(capsys.readouterr().err)
    assert rc == 2 and len(lines) == 1
    assert "--data-dir" in lines[0] and "--synthetic" in lines[0]
    assert not png.exists()


def test_show_synthetic_writes_a_png(tmp_path):
    png = tmp_path / "demo" / "t.png"
    rc = main(["data", "show", "--synthetic", "--out", str(png), "--n", "3", "--image-size", "8"])
    assert rc == 0
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape[0] > 300 and img.shape[1] > 300
    assert img.std() > 20  # not blank


def test_show_cifar_from_data_dir(mini_cifar, tmp_path):
    png = tmp_path / "c.png"
    args = ["--out", str(png), "--data-dir", str(mini_cifar["batches"]), "--n", "4"]
    rc = main(["data", "show", *args, "--cache-dir", str(tmp_path / "cache"), "--image-size", "8"])
    assert rc == 0 and png.stat().st_size > 1000


def test_display_inverts_standardisation(mini_cifar, tmp_path):
    cfg = {"dataset": "cifar10", "data_dir": str(mini_cifar["batches"]), "cache_dir": str(tmp_path)}
    d = build_dataset(cfg | {"test_size": 10, "subset_seed": 0})
    from workers.data import balanced_order

    idx = balanced_order(mini_cifar["arrays"]["labels_test"], 0)[:10]
    shown = _display(d.x_test, np.asarray(d.meta["mean"]), np.asarray(d.meta["std"]))
    diff = np.abs(shown.astype(int) - mini_cifar["arrays"]["x_test"][idx].astype(int))
    assert diff.max() <= 1  # the identity row shows the original pixels


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--synthetic", "--n", "0"], "--n must be between 1 and 20"),
        (["--synthetic", "--data-dir", "."], "--synthetic and --data-dir exclude each other"),
        (["--synthetic", "--seed", "-1"], "--seed must be >= 0"),
        (["--synthetic", "--image-size", "2"], "image_size must be at least 4"),
    ],
)
def test_show_bad_flags(tmp_path, capsys, args, match):
    rc = main(["data", "show", "--out", str(tmp_path / "x.png"), *args])
    lines = _error_lines(capsys.readouterr().err)
    assert rc == 2 and len(lines) == 1 and match in lines[0]


def test_prepare_bad_sources_exit_2(mini_cifar, tmp_path, capsys):
    import pickle

    cache = ["--cache-dir", str(tmp_path / "cache")]
    cases = []
    # the tarball is not the official one (its MD5 differs)
    cases.append(
        ([str(mini_cifar["tarball"])], "not the official c58f30108f718f92721af3b95e74349a")
    )
    # a tampered batch
    (mini_cifar["batches"] / "data_batch_2").write_bytes(
        pickle.dumps({b"data": print, b"labels": []}, protocol=2)
    )
    cases.append(([str(mini_cifar["batches"])], "print is not allowed"))
    cases.append(([str(tmp_path / "nowhere")], "does not exist"))
    for args, match in cases:
        rc = main(["data", "prepare", "--data-dir", *args, *cache])
        lines = _error_lines(capsys.readouterr().err)
        assert rc == 2 and len(lines) == 1 and match in lines[0], (args, lines)
