"""workers/devices.py and its use by trials: a trial granted GPUs whose JAX has none fails at
once (never computes on the CPU instead), and every row records what it ran on (issue 24,
item 2). This machine has no GPU, so the GPU side is the error; benchmarks/gpu_check.sh runs
the other side on a GPU machine."""

from __future__ import annotations

import logging

import pytest

from orchestrator.context import RunContext
from orchestrator.spec import Trial
from orchestrator.store import Store
from orchestrator.trial import execute_trial
from workers.devices import CPU_REHEARSAL, check_gpus, describe, device_info
from workers.errors import DeviceError


def test_device_info_names_jax_s_backend_and_devices():
    import jax

    info = device_info()
    assert info == {"backend": jax.default_backend(),
                    "device_kind": str(jax.local_devices()[0].device_kind),
                    "device_count": jax.local_device_count()}
    assert describe(info) == f"{info['backend']} {info['device_kind']} x{info['device_count']}"
    assert check_gpus(0) == info  # no GPU asked for: nothing to check


@pytest.mark.parametrize("gpus", [1, 0.5, 8])
def test_a_gpu_grant_on_the_cpu_backend_is_an_error_unless_rehearsing(gpus, monkeypatch,
                                                                        caplog):
    monkeypatch.delenv(CPU_REHEARSAL, raising=False)
    with pytest.raises(DeviceError, match=f"granted {gpus:g} GPU.*JAX runs on cpu"):
        check_gpus(gpus)
    monkeypatch.setenv(CPU_REHEARSAL, "1")
    with caplog.at_level(logging.WARNING, logger="symsweep"):
        assert check_gpus(gpus)["backend"] == "cpu"
    assert f"{CPU_REHEARSAL}=1" in caplog.text


def _worker(cfg, report):
    import jax.numpy as jnp

    report({"step": 1, "train_acc": float(jnp.ones(()))})
    return {"status": "completed", "best_test_acc": 0.5, "train_acc": 1.0}


def test_rows_record_the_device_and_a_gpu_trial_without_one_fails_before_its_worker(
        tmp_path, monkeypatch):
    monkeypatch.delenv(CPU_REHEARSAL, raising=False)
    ctx = RunContext(sweep="s", preset="smoke", results=str(tmp_path), code_version="x")
    cpu = Trial("tcpu", "train", {"arch": "fcn", "seed": 0}, {"cpu": 1})
    execute_trial(cpu, ctx, _worker)
    ran: list[str] = []

    def gpu_worker(cfg, report):
        ran.append("yes")
        return _worker(cfg, report)

    gpu = Trial("tgpu", "train", {"arch": "fcn", "seed": 0}, {"cpu": 1, "gpu": 1})
    with pytest.raises(DeviceError):
        execute_trial(gpu, ctx, gpu_worker)
    assert ran == []  # nothing computed on the CPU in the GPU's stead
    rows = Store(str(tmp_path), "s").read_trials_all()[0].to_pandas().set_index("trial_id")
    info = device_info()
    for tid in ("tcpu", "tgpu"):
        r = rows.loc[tid]
        assert (r["backend"], r["device_kind"], r["device_count"]) == (
            info["backend"], info["device_kind"], info["device_count"])
    assert rows.loc["tcpu", "status"] == "completed"
    assert rows.loc["tgpu", "status"] == "failed"
    assert "DeviceError: granted 1 GPU(s) but JAX runs on cpu" in rows.loc["tgpu", "error"]
