"""Sweep specs: expansion of Fig. 2, stable trial ids, Theorem 4.1 groups, validation."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.spec import (
    Preset,
    Sweep,
    kernel_equivalence_key,
    load_sweep,
    trial_id_of,
)
from workers.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
FIG2 = REPO / "sweeps" / "fig2.py"


def test_fig2_expands_to_the_paper_grid_with_seeds():
    sw = load_sweep(FIG2)
    for preset in ("smoke", "cpu", "paper"):
        trials = sw.expand(preset)
        kernel = [t for t in trials if t.kind == "kernel"]
        finite = [t for t in trials if t.kind == "train"]
        seeds = [0] if preset == "cpu" else [0, 1, 2, 3, 4]  # cpu: one seed (its budget)
        assert len(kernel) == 6 * 5 and len(finite) == 2 * 6 * 5 * len(seeds)
        cells = {(t.config["inference"], t.config["arch"], t.config["transform"])
                 for t in trials}
        assert len(cells) == 90
        assert sorted({t.config["seed"] for t in finite}) == seeds
        # the seed also draws tau: transform_seed follows it
        assert all(t.config["transform_seed"] == t.config["seed"] for t in trials)
        assert len({t.trial_id for t in trials}) == len(trials)
        # NN+ is 8x lr and L2 1e-7
        for t in finite:
            want = (8.0, 1e-7) if t.config["inference"] == "nn_plus" else (1.0, 0.0)
            assert (t.config["lr_factor"], t.config["l2"]) == want
        assert all("width" not in t.config and "max_steps" not in t.config for t in kernel)


def test_cpu_preset_compares_like_with_like():
    """Issue 14 item 4 and issue 27 item 1: every column of the cpu preset (kernel and finite,
    every arch) sees the same image size and the same training and test images; the kernels'
    fixed diag_reg is set in the preset and the chosen one is picked on a validation split
    (never the test set); finite nets have no validation split (nothing would use it)."""
    from workers.data import build_dataset

    trials = load_sweep(FIG2).expand("cpu")
    assert {t.config["image_size"] for t in trials} == {16}
    for t in trials:
        assert (t.config["train_size"], t.config["test_size"]) == (500, 500)
        assert t.config["dataset"] == "cifar10" and t.config["depth"] == 8
        if t.kind == "kernel":
            assert t.config["diag_reg"] == 1e-6 and t.config["val_size"] == 250
            assert list(t.config["diag_reg_grid"]) == sorted(t.config["diag_reg_grid"])
        else:
            assert t.config["val_size"] == 0 and "diag_reg_grid" not in t.config
    # the same images: a kernel cell's and a finite cell's data agree (synthetic stand-in for
    # CIFAR-10, same sizes and subset seed: the builder picks by (sizes, subset_seed) only)
    kern = next(t for t in trials if t.kind == "kernel" and t.config["transform"] == "identity")
    fin = next(t for t in trials if t.kind == "train" and t.config["transform"] == "identity")
    pick = {"dataset": "synthetic", "image_size": 8}
    a, b = build_dataset({**kern.config, **pick}), build_dataset({**fin.config, **pick})
    assert (a.x_train == b.x_train).all() and (a.x_test == b.x_test).all()


def test_trial_id_is_a_stable_hash_of_the_scientific_config_only():
    cfg = {"arch": "vec", "inference": "ntk", "transform": "identity", "seed": 0, "depth": 2}
    tid = trial_id_of(cfg)
    assert len(tid) == 16 and int(tid, 16) >= 0
    assert trial_id_of(dict(reversed(list(cfg.items())))) == tid  # key order
    assert trial_id_of({**cfg, "data_dir": "/x", "cache_dir": "/y"}) == tid  # where, not what
    assert trial_id_of({**cfg, "seed": 1}) != tid
    # same across processes (no PYTHONHASHSEED dependence)
    out = subprocess.run([sys.executable, "-c", "from orchestrator.spec import trial_id_of; "
                          f"print(trial_id_of({cfg!r}))"], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout.strip()
    assert out == tid
    # ints and floats of float fields hash alike; results root and resources do not matter
    sw = load_sweep(FIG2)
    a = sw.expand("smoke")
    assert [t.trial_id for t in a] == [t.trial_id for t in sw.expand("smoke")]
    p = sw.presets["smoke"]
    alt = Preset(config={**p.config, "w_var": 2}, width=p.width, seeds=p.seeds, rules=p.rules,
                 resources={"train": {"cpu": 2}}, success_train_acc=0.5)
    sw2 = Sweep(name="other", axes=sw.axes, presets={"smoke": alt})
    assert [t.trial_id for t in sw2.expand("smoke")] == [t.trial_id for t in a]


def test_theorem_4_1_groups_and_savings():
    sw = load_sweep(FIG2)
    ded = sw.expand("paper")
    full = sw.expand("paper", dedupe=False)
    assert [t.trial_id for t in ded] == [t.trial_id for t in full]
    assert all(t.derived_from is None for t in full)
    kern = {(t.config["arch"], t.config["transform"]): t for t in ded if t.kind == "kernel"}
    src = {k: (kern[k].derived_from or kern[k].trial_id) for k in kern}
    by_id = {t.trial_id: (t.config["arch"], t.config["transform"]) for t in ded}
    groups: dict[str, set] = {}
    for k, s in src.items():
        groups.setdefault(s, set()).add(k)
    T = ["identity", "shared_rotation", "pixel_rotation", "permutation", "global_rotation"]
    expect = [{("fcn", t) for t in T},
              {(a, t) for a in ("lcn", "vec") for t in T[:3]},
              {("lcn", "permutation"), ("vec", "permutation")},
              {("lcn", "global_rotation"), ("vec", "global_rotation")}]
    for a in ("gap", "lap4", "lap8"):
        expect.append({(a, "identity"), (a, "shared_rotation")})
        expect += [{(a, t)} for t in T[2:]]
    assert sorted(map(sorted, groups.values())) == sorted(map(sorted, expect))
    # the source of a group is one of its members and is computed
    for s, members in groups.items():
        assert by_id[s] in members and kern[by_id[s]].derived_from is None
    assert sum(t.derived_from is None for t in ded if t.kind == "kernel") == 16  # 14 of 30 saved
    # finite runs are never derived: the theorem equates distributions, not runs
    assert all(t.derived_from is None for t in ded if t.kind == "train")
    assert kernel_equivalence_key("lcn", "pixel_rotation") == ("vec", "identity")
    assert kernel_equivalence_key("gap", "pixel_rotation") == ("gap", "pixel_rotation")


def _sweep_file(tmp: Path, axes: str, preset: str = "smoke", cfg: str = "dict(depth=2)",
                extra: str = "") -> Path:
    p = tmp / "bad.py"
    p.write_text(textwrap.dedent(f"""
        from orchestrator.spec import Preset, Sweep
        SWEEP = Sweep(name="bad", axes={axes},
                      presets={{"{preset}": Preset(config={cfg}, width=dict(fcn=8, vec=8)
                                                    {extra})}})
    """))
    return p


@pytest.mark.parametrize("axes,preset,cfg,extra,field", [
    ('dict(inference=["ntk"], arch=["resnet"], transform=["identity"])', "smoke",
     "dict(depth=2)", "", "sweep.axes.arch"),
    ('dict(inference=["ntk"], arch=["fcn"], transform=["flip"])', "smoke", "dict(depth=2)", "",
     "sweep.axes.transform"),
    ('dict(inference=["sgd"], arch=["fcn"], transform=["identity"])', "smoke", "dict(depth=2)",
     "", "sweep.axes.inference"),
    ('dict(inference=["ntk"], arch=[], transform=["identity"])', "smoke", "dict(depth=2)", "",
     "sweep.axes.arch"),
    ('dict(inference=["ntk"], arch=["fcn"])', "smoke", "dict(depth=2)", "",
     "sweep.axes.transform"),
    ('dict(inference=["ntk"], arch="fcn", transform=["identity"])', "smoke", "dict(depth=2)", "",
     "sweep.axes.arch"),
    ('dict(inference=["ntk"], arch=["fcn"], transform=["identity"])', "huge", "dict(depth=2)",
     "", "sweep.presets.huge"),
    ('dict(inference=["ntk"], arch=["fcn"], transform=["identity"])', "smoke",
     'dict(depth="2")', "", "depth"),
    ('dict(inference=["ntk"], arch=["fcn"], transform=["identity"])', "smoke",
     "dict(dept=2)", "", "dept"),
    ('dict(inference=["nn"], arch=["fcn", "gap"], transform=["identity"])', "smoke",
     "dict(depth=2)", "", "sweep.presets.smoke.width"),
    ('dict(inference=["ntk"], arch=["fcn"], transform=["identity"])', "smoke", "dict(depth=2)",
     ", seeds=()", "seeds"),
    ('dict(inference=["ntk"], arch=["fcn"], transform=["identity"])', "smoke", "dict(depth=2)",
     ", resources=dict(kernel=dict(tpu=1))", "resources.kernel"),
])
def test_malformed_sweep_names_the_field(tmp_path, axes, preset, cfg, extra, field):
    path = _sweep_file(tmp_path, axes, preset, cfg, extra)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_sweep(path)


def test_malformed_sweep_fails_before_anything_starts(tmp_path):
    from orchestrator.cli import main

    path = _sweep_file(tmp_path, 'dict(inference=["ntk"], arch=["resnet"], '
                                 'transform=["identity"])')
    res = tmp_path / "res"
    r = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(path),
                        "--results", str(res)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "sweep.axes.arch" in r.stderr
    assert "resnet" in r.stderr and not res.exists()
    assert main(["run", str(FIG2), "--preset", "nope", "--results", str(res)]) == 2
    assert main(["run", str(tmp_path / "missing.py")]) == 2
    assert not res.exists()


def test_script_mode_equals_cli():
    a = subprocess.run([sys.executable, str(FIG2), "--preset", "smoke", "--dry-run"],
                       capture_output=True, text=True, cwd=REPO)
    b = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", "sweeps/fig2.py",
                        "--preset", "smoke", "--dry-run"], capture_output=True, text=True,
                       cwd=REPO)
    assert a.returncode == b.returncode == 0, (a.stderr, b.stderr)
    assert a.stdout == b.stdout
    assert "330 trials (30 kernel cells, 300 finite runs); kernel computations 16 of 30" in a.stdout


def test_range_error_bounds_nan_and_non_numbers():
    from orchestrator.spec import range_error

    assert range_error("width", 1) is None and range_error("width", 0) is not None
    assert range_error("val_size", 0) is None and "val_size must be >= 0" in range_error(
        "val_size", -1)
    assert range_error("momentum", 0.0) is None and range_error("momentum", 1.0) is not None
    assert range_error("path_t", 1.0) is None and range_error("path_t", 1.01) is not None
    assert range_error("w_var", float("nan")) is not None  # NaN is in no range
    assert range_error("b_var", 0.0) is None  # b_var = 0 is a valid config
    assert range_error("dataset", "cifar10") is None and range_error("seed", -3) is None


def test_only_values_compare_numbers_by_value():
    from orchestrator.spec import parse_only, select_trials

    trials = load_sweep(FIG2).expand("smoke")
    assert parse_only(["arch=vec, gap", "arch=vec", "seed=0"]) == {"arch": ["vec", "gap"],
                                                                  "seed": ["0"]}
    a = select_trials(trials, {"w_var": ["2"], "kind": ["kernel"]})
    b = select_trials(trials, {"w_var": ["2.0"], "kind": ["kernel"]})
    assert a == b and len(a) == 30
    with pytest.raises(ConfigError, match="no trial has w_var '3'; valid values: 2.0"):
        select_trials(trials, {"w_var": ["3"]})
