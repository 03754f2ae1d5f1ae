"""The ImageNet trainer on several devices of one node (the paper preset's "one 8-GPU node a
trial"), checked on CPU: XLA's forced host devices (``--xla_force_host_platform_device_count``)
stand in for the GPUs. The flag must be set before jax is imported, so every run here is a
subprocess (`_run`), one with 8 devices and one with 1, on the same tiny configs.

What is compared, and to what tolerance (see `test_eight_devices_match_one`):
- BatchNorm on the sharded batch uses the statistics of the whole global batch: one forward
  pass on 8 devices gives the running statistics of the unsharded batch (to float32 rounding,
  1e-5 of the largest value) and not the mean of the per-device statistics (a batch whose
  devices hold shifted rows makes those differ at order 1);
- a whole run (a few dozen SGD steps, evaluations with a padded last batch) gives the same
  test accuracies and, to float32 accumulation error, the same final parameters;
- a run resumed from a mid-run checkpoint on 8 devices, reading with ``loader_processes=2``,
  ends where the uninterrupted 8-device run (loader threads) ends;
- a batch that does not divide over the devices is the one-line ConfigError.
Multi-host (several processes) is not tested here: a sweep trial is one node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# tiny nets, 48 training images (3 classes x 16), 12 val images, batch 16 (2 per device on 8),
# eval batches of 5 (5, 5, 2: none divides over 8 devices), 8 epochs = 24 SGD steps
BASE = dict(image_size=12, epochs=8, batch_size=16, warmup_epochs=1, loader_threads=2,
            eval_batch_size=5, seed=1, data_dir="synthetic://3x16x16", keep_checkpoints=0,
            transform="pixel_rotation")
CONFIGS = {
    "resnet": dict(BASE, arch="resnet18", width=4),  # BatchNorm
    "mixer": dict(BASE, arch="mixer_s16", width=8, depth=1, patch_size=4),  # no BatchNorm
}

SCRIPT = textwrap.dedent('''
    import json, os, sys
    import jax, numpy as np
    from workers.errors import ConfigError
    from workers.imagenet_train import train_imagenet

    spec = json.loads(sys.argv[1])
    out = {"devices": len(jax.devices())}
    for name, cfg in spec["runs"].items():
        try:
            res = train_imagenet(cfg, (lambda m, ck: None) if cfg.get("work_dir") else None)
            out[name] = {k: res[k] for k in ("steps", "test_acc", "best_test_acc",
                                             "train_loss", "train_acc")}
            out[name]["history"] = [[h["test_acc"], h["train_loss"], h["train_acc"]]
                                    for h in res["history"]]
        except ConfigError as ex:
            out[name] = {"error": str(ex)}
    if spec.get("bn_check"):
        # one forward pass in training mode on a batch sharded over the devices
        from jax.sharding import Mesh, NamedSharding, PartitionSpec
        from workers.imagenet_models import init_variables, make_imagenet_model
        model = make_imagenet_model("resnet18", num_classes=3, width=4)
        v = init_variables(model, jax.random.key(0), (12, 12, 3))
        rng = np.random.default_rng(0)
        n = len(jax.devices())
        # every device's rows have their own offset: per-device statistics differ from global
        x = rng.normal(size=(2 * n, 12, 12, 3)).astype(np.float32)
        x += np.repeat(np.arange(n, dtype=np.float32), 2)[:, None, None, None]
        mesh = Mesh(np.asarray(jax.devices()), ("batch",))
        xs = jax.device_put(x, NamedSharding(mesh, PartitionSpec("batch")))
        vr = jax.device_put(v, NamedSharding(mesh, PartitionSpec()))
        f = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[1])
        sharded = jax.device_get(f(vr, xs))
        with jax.default_device(jax.devices()[0]):
            whole = jax.device_get(f(v, jax.device_put(x, jax.devices()[0])))
            per_dev = [jax.device_get(f(v, jax.device_put(x[2 * i:2 * i + 2],
                                                          jax.devices()[0])))
                       for i in range(n)]
        def leaves(t):
            return [np.asarray(a) for a in jax.tree_util.tree_leaves(t)]
        avg = [np.mean(z, 0) for z in zip(*(leaves(p) for p in per_dev))]
        # largest difference in a statistic, relative to the largest value of that statistic
        def rel(xs, ys):
            return max(float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in zip(xs, ys))
        out["bn"] = {"vs_whole": rel(leaves(sharded), leaves(whole)),
                     "vs_per_device": rel(leaves(sharded), avg)}
    print("RESULT " + json.dumps(out))
''')


def _run(devices: int, runs: dict, *, bn_check: bool = False) -> dict:
    """Run ``train_imagenet`` on each config of ``runs`` in a fresh Python with ``devices``
    forced host devices; returns each run's metrics (or {"error": message} for a
    ConfigError) and, with ``bn_check``, the BatchNorm comparison."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    proc = subprocess.run([sys.executable, "-c", SCRIPT,
                           json.dumps({"runs": runs, "bn_check": bn_check})],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    assert out["devices"] == devices
    return out


def _state(work_dir: str, step: int) -> dict[str, np.ndarray]:
    with np.load(os.path.join(work_dir, f"checkpoint_{step:09d}", "state.npz")) as z:
        return {k: z[k] for k in z.files}


def test_batchnorm_uses_the_global_batch() -> None:
    """One training-mode forward pass of a ResNet on a batch sharded over 8 devices: the new
    running statistics are those of the whole batch (to float32 rounding: 1e-5 of the
    largest value), not the mean of the 8 devices' own statistics (rows shifted per device
    make those differ at order 1). The point of sharding the batch rather than pmapping."""
    bn = _run(8, {}, bn_check=True)["bn"]
    assert bn["vs_whole"] < 1e-5
    assert bn["vs_per_device"] > 1e-2


@pytest.mark.slow
def test_eight_devices_match_one(tmp_path) -> None:
    cache = str(tmp_path / "cache")
    d = {n: {k: str(tmp_path / f"{n}-{k}") for k in ("one", "eight", "resumed")}
         for n in CONFIGS}
    one = _run(1, {n: dict(c, cache_dir=cache, work_dir=d[n]["one"])
                   for n, c in CONFIGS.items()})
    # the 8-device run; a run resumed on 8 devices from its epoch-3 checkpoint (step 9) that
    # reads its batches with 2 loader processes (grain workers started by a process whose
    # JAX runtime holds 8 devices); a batch of 12 that does not divide over 8 devices
    res_ckpt = os.path.join(d["resnet"]["eight"], "checkpoint_000000009")
    eight = _run(8, {n: dict(c, cache_dir=cache, work_dir=d[n]["eight"])
                     for n, c in CONFIGS.items()})
    resumed = _run(8, {
        "resnet": dict(CONFIGS["resnet"], cache_dir=cache, work_dir=d["resnet"]["resumed"],
                       resume_from=res_ckpt, loader_processes=2),
        "odd_batch": dict(CONFIGS["mixer"], cache_dir=cache, batch_size=12),
    })

    for n in CONFIGS:
        a, b = one[n], eight[n]
        assert a["steps"] == b["steps"] == 24
        # accuracies are counts over 12 val images: equal unless a logit pair is within
        # float32 noise of a tie
        assert [h[0] for h in a["history"]] == [h[0] for h in b["history"]], n
        np.testing.assert_allclose([h[1] for h in a["history"]],
                                   [h[1] for h in b["history"]], rtol=1e-5, err_msg=n)
        # final state (parameters, batch statistics, momentum), as one vector: the 8-device
        # run sums its gradients and statistics in another order, so each step differs by
        # float32 rounding (eps = 1.2e-7 relative); over 24 steps that grows at most about
        # linearly, to ~3e-6; 1e-5 leaves a margin of 3 (measured: 6e-7 resnet, 6e-9 mixer).
        # (A per-device BatchNorm would differ at order 1: test_batchnorm_uses_the_global_batch.)
        p1, p8 = _state(d[n]["one"], 24), _state(d[n]["eight"], 24)
        assert p1.keys() == p8.keys()
        diff = np.sqrt(sum(np.sum((p1[k] - p8[k]) ** 2) for k in p1))
        norm = np.sqrt(sum(np.sum(p1[k] ** 2) for k in p1))
        assert diff <= 1e-5 * norm, (n, diff / norm)

    # resumed on 8 devices (loader processes) == uninterrupted on 8 devices (loader threads)
    assert resumed["resnet"]["history"] == eight["resnet"]["history"]
    pr, p8 = _state(d["resnet"]["resumed"], 24), _state(d["resnet"]["eight"], 24)
    for k in p8:
        np.testing.assert_allclose(pr[k], p8[k], rtol=1e-6, atol=1e-7, err_msg=k)

    # a batch that does not divide over the devices: the one-line ConfigError
    msg = resumed["odd_batch"]["error"]
    assert "does not divide over 8 devices" in msg and "\n" not in msg
