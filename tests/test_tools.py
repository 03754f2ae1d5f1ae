"""tools/train_one.py: one training run from KEY=VALUE pairs."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import train_one  # noqa: E402


def test_train_one_prints_records_and_final_metrics(capsys):
    code = train_one.main(["arch=fcn", "width=16", "depth=1", "dataset=synthetic",
                           "image_size=8", "train_size=80", "val_size=0", "test_size=40",
                           "max_steps=20", "eval_every=10", "eta0_samples=8", "eta0_inits=1"])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert [r["step"] for r in lines[:-1]] == [10, 20]
    final = lines[-1]["final"]
    assert final["status"] == "completed" and final["steps"] == 20
    assert lines[-1]["config"]["width"] == 16 and lines[-1]["config"]["arch"] == "fcn"


def test_train_one_bad_input_is_one_line_exit_2(capsys):
    assert train_one.main(["width"]) == 2
    assert train_one.main(["arch=resnet", "dataset=synthetic"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("train_one: ") for e in err)
    assert "KEY=VALUE" in err[0] and "resnet" in err[1]
