"""`symsweep plan`: projection arithmetic against closed forms, the tile count against the
kernel engine's own layout, the step-time normalisation against a fake clock, and the
command end to end on the smoke preset with tiny measurements."""

from __future__ import annotations

import json
import types

import pytest

from orchestrator.cli import main
from orchestrator.plan import (
    CIFAR_SIZES,
    ETA0_INITS,
    LANCZOS_ITERS,
    TrialCost,
    Unit,
    data_sizes,
    kernel_key,
    kernel_pairs,
    load_units,
    make_plan,
    measure_train,
    train_key,
    trial_cost,
    wall_time,
)
from orchestrator.spec import Trial, load_sweep


def _trial(kind: str, **cfg) -> Trial:
    base = dict(arch="vec", inference="nn" if kind == "train" else "ntk", transform="identity",
                seed=0, depth=8, dataset="cifar10")
    base.update(cfg)
    return Trial("t" + kind, kind, base, {"cpu": 1.0})


def _cost(gpu_s: float, kind: str = "train", pieces: int = 1, cpu_s: float = 0.0,
          derived: bool = False) -> TrialCost:
    return TrialCost("x", kind, "nn", "vec", derived, gpu_s, cpu_s, pieces, {})


def test_data_sizes_defaults_and_flips():
    assert data_sizes({"dataset": "cifar10"}) == CIFAR_SIZES
    assert data_sizes({"dataset": "cifar10", "train_size": 320, "flip": True,
                       "val_size": 0})["train"] == 640
    assert data_sizes({"dataset": "synthetic", "train_size": 256, "val_size": 64,
                       "test_size": 256}) == {"train": 256, "val": 64, "test": 256}


def test_train_cost_is_the_closed_form():
    t = _trial("train", width=128, max_steps=10_000, eval_every=1000, batch_size=40,
               train_size=1000, val_size=100, test_size=500)
    u = Unit(train_key(t.config), "train", step_s=0.5, fwd_s_per_image=0.01, matvec_s=2.0)
    c = trial_cost(t, {u.key: u})
    eta0 = ETA0_INITS * (LANCZOS_ITERS + 1) * 2.0 * 256 / 256
    assert c.gpu_s == pytest.approx(10_000 * 0.5 + 10 * 1600 * 0.01 + eta0)
    assert c.cpu_s == 0 and c.pieces == 1
    # a given eta0 skips the estimate; fewer training points than 256 scale it down
    assert trial_cost(_trial("train", **{**t.config, "eta0": 0.1}), {u.key: u}).gpu_s == \
        pytest.approx(10_000 * 0.5 + 10 * 1600 * 0.01)
    small = _trial("train", **{**t.config, "train_size": 64})
    assert trial_cost(small, {u.key: u}).detail["eta0_s"] == pytest.approx(eta0 * 64 / 256)


def test_kernel_pairs_follow_the_engines_tiles():
    from workers.kernels import plan_tiles

    cfg = dict(arch="gap", dataset="cifar10", depth=8, train_size=300, val_size=0,
               test_size=100)
    pairs, tiles = kernel_pairs(cfg)
    sym = plan_tiles(300, 300, archs=["gap"], image_shape=(32, 32, 3), symmetric=True)
    rect = plan_tiles(100, 300, archs=["gap"], image_shape=(32, 32, 3))
    assert tiles == len(sym) + len(rect) > 2
    # the upper triangle of tiles covers at least the upper triangle of pairs, never all
    assert 300 * 301 // 2 + 100 * 300 <= pairs < 300 * 300 + 100 * 300
    # one tile covers a small matrix whole: train x train + test x train + val x train
    small = dict(arch="fcn", dataset="synthetic", train_size=50, val_size=10, test_size=20,
                 image_size=8)
    assert kernel_pairs(small) == (50 * 50 + 20 * 50 + 10 * 50, 3)


def test_kernel_cost_and_derived_cells():
    t = _trial("kernel", arch="fcn", dataset="synthetic", train_size=200, val_size=0,
               test_size=100, image_size=8)
    u = Unit(kernel_key(t.config), "kernel", pair_s=1e-6, solve_s=0.5, solve_n=100)
    c = trial_cost(t, {u.key: u})
    pairs, _ = kernel_pairs(t.config)
    assert c.gpu_s == pytest.approx(pairs * 1e-6)
    assert c.cpu_s == pytest.approx(2 * 0.5 * (200 / 100) ** 3)
    d = Trial("d", "kernel", t.config, {}, derived_from="src")
    assert trial_cost(d, {}).gpu_s == 0 and trial_cost(d, {}).derived


def test_wall_time_closed_forms():
    # 8 equal runs on 4 GPUs: two rounds
    w = wall_time([_cost(10.0) for _ in range(8)], 4, 1.0)
    assert w["wall_s"] == pytest.approx(20.0) and w["lower_bound_s"] == pytest.approx(20.0)
    # one long run dominates however many GPUs there are
    w = wall_time([_cost(100.0)] + [_cost(1.0)] * 10, 64, 1.0)
    assert w["wall_s"] == pytest.approx(100.0)
    # a kernel cell splits into its tiles; the device factor divides GPU work only
    w = wall_time([_cost(400.0, "kernel", pieces=1000, cpu_s=7.0)], 4, 2.0)
    assert w["wall_s"] == pytest.approx(400.0 / 2 / 4 + 7.0)
    assert w["longest_piece_s"] == pytest.approx(50.0)
    # ... but over at most tile_inflight GPUs at once (what the runner keeps in flight):
    # one cell of 400 s with 8 in flight takes 50 s on 64 GPUs, not 400 / 64
    spread = _cost(400.0, "kernel", pieces=1000)
    spread.spread = 8
    assert wall_time([spread], 64, 1.0)["wall_s"] == pytest.approx(50.0)
    assert wall_time([spread, spread], 64, 1.0)["wall_s"] == pytest.approx(50.0)  # side by side
    # copies cost nothing; longest-first on {5,4,3,3,3} over 2 GPUs: A 5+3, B 4+3+3 = 10
    # (the textbook case where LPT misses the optimum 9, within its 4/3 bound)
    w = wall_time([_cost(x) for x in (3, 3, 5, 4, 3)] + [_cost(99, derived=True)], 2, 1.0)
    assert w["wall_s"] == pytest.approx(10.0) and w["lower_bound_s"] == pytest.approx(9.0)
    with pytest.raises(Exception, match="--gpus"):
        wall_time([], 0, 1.0)


def test_measured_step_time_is_seconds_per_step(monkeypatch):
    """`measure_train` divides the timed run by the number of steps it ran (not per call, not
    miscounted), and the forward time by the images of one warm batch. A fake clock that
    advances exactly 2 ms per SGD step (plus 50 ms for the first, compiling call) and 0.1 ms
    per predicted image makes every number exact. No wall-clock assertion: the default suite
    must pass on a loaded 2-core machine (timings belong in benchmarks/)."""
    from orchestrator.plan import measure as plan_mod
    from workers.train import Trainer

    clock = {"t": 0.0}
    monkeypatch.setattr(plan_mod, "time", types.SimpleNamespace(perf_counter=lambda: clock["t"]))
    monkeypatch.setattr(plan_mod, "_time_matvec", lambda *a, **k: 0.01)  # timed elsewhere
    calls: list[int] = []
    real_run, real_predict = Trainer.run, Trainer.predict

    def run(self, state, start_step, n_steps):
        out = real_run(self, state, start_step, n_steps)  # the real loop: real steps counted
        calls.append(int(n_steps))
        clock["t"] += 0.002 * int(n_steps) + (0.05 if len(calls) == 1 else 0.0)
        return out

    def predict(self, params, x, *args, **kwargs):
        out = real_predict(self, params, x, *args, **kwargs)
        clock["t"] += 1e-4 * len(x)
        return out

    monkeypatch.setattr(Trainer, "run", run)
    monkeypatch.setattr(Trainer, "predict", predict)
    u = measure_train(("train", "fcn", 32, 2, 8, 40), steps=50, budget_s=5.0)
    assert calls == [1, 1, 50]  # compile + 1, a probe step, then the timed 50
    assert u.steps_timed == 50 and u.step_s == pytest.approx(0.002, rel=1e-9)
    assert u.compile_s == pytest.approx(0.052, rel=1e-9)
    assert u.fwd_s_per_image == pytest.approx(1e-4, rel=1e-9)
    assert u.matvec_s > 0 and not u.notes
    # a budget that admits fewer steps times fewer, and says so
    calls.clear()
    u = measure_train(("train", "fcn", 32, 2, 8, 40), steps=50, budget_s=0.021)  # 10.5 steps
    assert calls == [1, 1, 10] and u.steps_timed == 10
    assert u.step_s == pytest.approx(0.002, rel=1e-9) and "10 of 50 steps timed" in u.notes[0]


def test_plan_command_smoke_end_to_end(tmp_path, capsys):
    units = tmp_path / "units.json"
    args = ["plan", "sweeps/fig2.py", "--preset", "smoke", "--only", "arch=fcn", "--steps", "5",
            "--budget-s", "0.5", "--solve-n", "64", "--gpus", "3", "--save-units", str(units)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Measured unit costs" in out and "fig2 [smoke]" in out
    assert "train  fcn   width 64" in out and "kernel fcn" in out
    assert "per column (arch):   fcn" in out and "wall on 3 GPU(s)" in out
    saved = load_units(str(units))
    assert {u.kind for u in saved.values()} == {"train", "kernel"}
    # reusing the units measures nothing and gives the same numbers; JSON is parseable
    assert main([*args[:-2], "--units", str(units), "--json", "--device-factor", "4"]) == 0
    plans = json.loads(capsys.readouterr().out)
    p = plans[0]
    assert p["sweep"] == "fig2" and p["preset"] == "smoke" and p["device_factor"] == 4
    sw = load_sweep("sweeps/fig2.py")
    direct = make_plan(sw, "smoke", gpus=3, device_factor=4, only={"arch": ["fcn"]},
                       units=saved)
    assert p["device_hours"] == pytest.approx(direct.device_hours())
    n_trials = len([t for t in sw.expand("smoke") if t.config["arch"] == "fcn"])
    assert len(p["trials"]) == n_trials
    # 25 NN + 25 NN+ finite runs and 5 kernel cells, of which 4 are Theorem-4.1 copies
    assert sum(t["derived"] for t in p["trials"]) == 4


@pytest.mark.parametrize("extra,msg", [(["--device-factor", "0"], "--device-factor"),
                                       (["--gpus", "0"], "--gpus"),
                                       (["--only", "color=red"], "--only"),
                                       (["--preset", "huge"], "huge")])
def test_plan_bad_input_is_one_line_exit_2(tmp_path, capsys, extra, msg):
    units = tmp_path / "u.json"
    units.write_text("[]")
    code = main(["plan", "sweeps/fig2.py", "--preset", "smoke", "--units", str(units),
                 "--only", "arch=fcn", *extra])
    err = capsys.readouterr().err
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1


def test_busy_machine_is_flagged():
    import os

    from orchestrator.plan import Plan, format_plans

    costs = [_cost(3600.0)]
    quiet = Plan("fig2", "smoke", costs, {}, 1, 1.0, wall_time(costs, 1, 1.0), load=0.0)
    busy = Plan("fig2", "smoke", costs, {}, 1, 1.0, wall_time(costs, 1, 1.0),
                load=4.0 * (os.cpu_count() or 1))
    assert "WARNING: load average" not in format_plans([quiet])
    text = format_plans([busy])
    assert "WARNING: load average" in text and "figure total: 1.0 h device time" in text
