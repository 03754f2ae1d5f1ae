"""workers/registry.py: the trial kinds' workers stated once, and the options each takes
declared in a `Worker` (issue 22, item 3)."""

from __future__ import annotations

import pytest

from orchestrator.spec import Preset, Sweep
from workers.errors import ConfigError
from workers.registry import BUILTIN, Worker, check_workers, worker_for
from workers.vocab import TRIAL_KINDS


def test_the_builtin_workers_declare_their_options():
    from workers.kernel_trial import run_kernel_trial
    from workers.train import train

    assert set(BUILTIN) == set(TRIAL_KINDS)
    assert worker_for("train") == Worker(train, takes_stop=True)
    assert worker_for("kernel") == Worker(run_kernel_trial, takes_tiles=True)
    with pytest.raises(ConfigError, match="trial kind 'gp': expected one of train, kernel"):
        worker_for("gp")


def test_a_sweep_s_function_declares_its_options_by_name_and_gets_only_those():
    got = {}

    def plain(cfg, report):
        got["plain"] = cfg
        return {"status": "completed"}

    def stopping(cfg, report, should_stop):
        got["stop"] = should_stop()
        return {"status": "completed"}

    w, s = Worker.of(plain), Worker.of(stopping)
    assert (w.takes_stop, w.takes_tiles, s.takes_stop, s.takes_tiles) == (False, False, True,
                                                                          False)
    assert Worker.of(s) is s
    w({"a": 1}, None, should_stop=lambda: True, map_tiles=None)  # options it lacks: dropped
    s({}, None, should_stop=lambda: True, map_tiles=None)
    assert got == {"plain": {"a": 1}, "stop": True}
    with pytest.raises(ConfigError, match="is not a function"):
        Worker.of(42)


def test_a_sweep_s_workers_are_checked_when_it_is_made():
    def fn(cfg, report):
        return {}

    p = {"smoke": Preset(config={}, width={"fcn": 8})}
    sw = Sweep(name="s", axes={"arch": ["fcn"], "inference": ["nn"],
                               "transform": ["identity"]}, presets=p, workers={"train": fn})
    assert sw.workers == {"train": Worker(fn)}
    assert worker_for("train", sw.workers) == Worker(fn)
    assert worker_for("kernel", sw.workers) == worker_for("kernel")  # not replaced
    with pytest.raises(ConfigError, match="a worker replaces one of the trial kinds"):
        check_workers({"trainer": fn})
