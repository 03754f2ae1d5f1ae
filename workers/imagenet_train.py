"""The ImageNet worker: Flax's ImageNet example recipe on an image folder (Fig. 5, Fig. 4 right,
Fig. S4; paper Sec. 6.2, App. B.2/B.3, F.2), for the `nn` inference with ``dataset="imagenet"``.

Recipe (Flax examples/imagenet: train.py, configs/default.py):
- loss: softmax cross-entropy on one-hot labels plus weight_decay / 2 * sum of squares of every
  parameter with ndim > 1 (kernels; not biases, not batch-norm scales), weight_decay = 1e-4;
- SGD with momentum 0.9, Nesterov; learning rate base_lr * batch / 256 (base_lr = 0.1), linear
  warm-up from 0 over ``warmup_epochs`` (5) then cosine decay to 0 at the last step;
- batch 1024 (the paper preset; the example's default); ``epochs`` (150 in the paper; the
  example's default is 100); an epoch is floor(m / batch) steps (the last partial batch is
  dropped, as the example does); if m < batch the batch is m (the learning rate follows it);
- batch norm (momentum 0.9, eps 1e-5) on the global batch; evaluation with running averages.
The same recipe trains the Mixer (the paper trains both with it; App. B.3).

Data: `workers.imagenet` (train/val folders, nested class-balanced subset m_i of the training
images, ``subset`` = i, 0 = all; ``test_size`` caps the val images with a class-balanced
subset). The transform tau (``transform``, ``transform_seed``) is drawn once for the eval image
size and applied to train and val images alike.

Checkpoints: every ``checkpoint_every_epochs`` epochs, through `workers.checkpoint`'s
save_checkpoint / load_checkpoint (the CIFAR trainer's format: state arrays + JSON meta); the
runner copies each reported checkpoint into the trial-keyed store and passes the latest back as
``resume_from``, so a later attempt continues at that step. Batch s of the run is a pure
function of (seed, s) (grain's random access), so a resumed run sees the batches an
uninterrupted one would.

Devices (a sweep trial is one node, one process): a 1-D mesh over ``jax.devices()``; the
global batch is sharded over it (`jax.make_array_from_process_local_data`), the state
(parameters, batch statistics, momentum) replicated, and the jitted step is partitioned by XLA
(SPMD): the batch means of the loss and of BatchNorm become all-reduces over the devices, so
BatchNorm normalises with the statistics of the whole global batch, as the example's
``axis_name="batch"`` does under pmap. Evaluation is sharded the same way, every eval batch
padded to a multiple of the devices with masked rows. Tested (tests/test_imagenet_devices.py)
with 8 forced CPU devices against 1: the same test accuracies and the same final state to
float32 rounding; BatchNorm's statistics those of the global batch; a resume on 8 devices
equal to an uninterrupted 8-device run. Not tested: several processes (multi-host). The code
reads per-host slices for it (``process_index::process_count`` rows of each batch), but a
multi-host run would also need every host to see the same number of eval batches (the val
images are split per host; unequal counts would leave hosts waiting in different collectives)
and `jax.distributed.initialize` before the first jax call; neither is done here.

Loader: ``loader_threads`` threads decode the training images in this process, or, with
``loader_processes`` > 0, that many grain worker processes do (the same batches either way:
`workers.imagenet.stream_batches`); evaluation reads with the same threads or processes.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from workers.checkpoint import load_checkpoint, load_resume_meta, save_checkpoint
from workers.errors import ConfigError
from workers.imagenet import (
    eval_pipeline,
    in_processes,
    nested_subset,
    resolve_data_dir,
    scan_split,
    stream_batches,
    subset_size,
    train_pipeline,
)
from workers.imagenet_models import init_variables, make_imagenet_model
from workers.transforms import make_transform
from workers.vocab import IMAGENET_ARCHS, Status

Report = Callable[[dict, "str | None"], None]

DEFAULTS: dict[str, Any] = {
    "arch": "resnet50", "width": None, "depth": None, "patch_size": None,
    "data_dir": None, "cache_dir": None, "num_classes": None, "image_size": 224,
    "subset": 0, "subset_seed": 0, "test_size": None,
    "transform": "identity", "transform_seed": None, "seed": 0,
    "epochs": 150, "batch_size": 1024, "base_lr": 0.1, "warmup_epochs": 5.0,
    "weight_decay": 1e-4, "momentum": 0.9, "nesterov": True,
    "eval_every_epochs": 1, "checkpoint_every_epochs": 1, "eval_batch_size": 256,
    "loader_threads": 8, "loader_processes": 0, "max_train_steps": None, "keep_checkpoints": 2,
    "resume_from": None, "work_dir": None, "success_train_acc": 0.0,
}
# what must agree between a checkpoint and the run resuming from it
_SCIENTIFIC = ("arch", "width", "depth", "patch_size", "image_size", "subset", "subset_seed",
               "transform", "transform_seed", "seed", "epochs", "batch_size", "base_lr",
               "warmup_epochs", "weight_decay", "momentum", "nesterov", "num_classes")
# keys the CIFAR trainer reads that mean nothing here (set by the `nn` inference defaults or
# by a shared preset); accepted and ignored, so a sweep can reuse the common config
_IGNORED = ("inference", "dataset", "lr_factor", "l2", "store_predictions",
            "eval_every", "checkpoint_every", "max_steps", "train_size", "val_size", "w_var",
            "b_var", "train_eval_size", "diverge_loss", "early_stop_train_acc")


def resolve_config(config: dict) -> dict:
    """DEFAULTS updated with ``config``; raises `ConfigError` for unknown keys, an arch that is
    not an ImageNet arch, a missing data_dir or a non-positive size."""
    unknown = set(config) - set(DEFAULTS) - set(_IGNORED)
    if unknown:
        raise ConfigError(f"imagenet training: unknown config keys {sorted(unknown)}; known: "
                          f"{', '.join(sorted(DEFAULTS))}")
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if k not in _IGNORED}}
    if cfg["arch"] not in IMAGENET_ARCHS:
        raise ConfigError(f"dataset imagenet trains {', '.join(IMAGENET_ARCHS)}, not "
                          f"{cfg['arch']!r}; pick one of those archs")
    if not cfg["data_dir"]:
        raise ConfigError("dataset imagenet needs data_dir (the folder holding train/ and "
                          "val/); pass --data-dir DIR")
    for k in ("image_size", "epochs", "batch_size", "eval_every_epochs",
              "checkpoint_every_epochs", "eval_batch_size", "loader_threads"):
        if int(cfg[k]) < 1:
            raise ConfigError(f"{k} must be >= 1, got {cfg[k]}")
    if int(cfg["loader_processes"]) < 0:
        raise ConfigError(f"loader_processes must be >= 0 (0: decode on loader_threads threads "
                          f"of the trial's process), got {cfg['loader_processes']}")
    if cfg["transform_seed"] is None:
        cfg["transform_seed"] = cfg["seed"]
    return cfg


def lr_schedule(base_lr: float, batch_size: int, steps_per_epoch: int, epochs: int,
                warmup_epochs: float) -> optax.Schedule:
    """The example's schedule: linear warm-up 0 -> base_lr * batch / 256 over warmup_epochs,
    then cosine decay to 0 at epochs * steps_per_epoch (learning rate per step)."""
    peak = base_lr * batch_size / 256.0
    warm = int(round(warmup_epochs * steps_per_epoch))
    total = epochs * steps_per_epoch
    warm = min(warm, max(total - 1, 0))
    cosine = optax.cosine_decay_schedule(peak, decay_steps=max(total - warm, 1))
    if warm == 0:
        return cosine
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), cosine], [warm])


def weight_penalty(params: Any) -> jax.Array:
    """1/2 sum of squares of every parameter array with ndim > 1 (the example's L2 term)."""
    return 0.5 * sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(params)
                     if x.ndim > 1)


def make_step(model: Any, tx: optax.GradientTransformation, weight_decay: float,
              num_classes: int) -> Callable:
    """One jit-compiled SGD step: (state, images, labels) -> (state, {loss, correct})."""
    def loss_fn(params: Any, batch_stats: Any, x: jax.Array, y: jax.Array) -> tuple:
        variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
        if batch_stats:
            logits, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
            new_stats = upd["batch_stats"]
        else:
            logits, new_stats = model.apply(variables, x, train=True), batch_stats
        onehot = jax.nn.one_hot(y, num_classes)
        ce = jnp.mean(optax.softmax_cross_entropy(logits, onehot))
        loss = ce + weight_decay * weight_penalty(params)
        return loss, (ce, new_stats, jnp.sum(jnp.argmax(logits, -1) == y))

    @jax.jit
    def step(state: dict, x: jax.Array, y: jax.Array) -> tuple[dict, dict]:
        (loss, (ce, stats, correct)), g = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], state["batch_stats"], x, y)
        upd, opt = tx.update(g, state["opt_state"], state["params"])
        new = {"params": optax.apply_updates(state["params"], upd), "batch_stats": stats,
               "opt_state": opt}
        return new, {"loss": loss, "ce": ce, "correct": correct}

    return step


def make_eval(model: Any) -> Callable:
    """jit-compiled (params, batch_stats, images (B, S, S, 3), labels (B,), valid (B,) bool or
    None) -> (number of correct top-1 among the valid rows, number of valid rows), both int32
    scalars. ``valid`` marks the real images of a batch padded to divide over the devices
    (None: every row is real)."""

    @jax.jit
    def correct(params: Any, batch_stats: Any, x: jax.Array, y: jax.Array,
                valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
        logits = model.apply(variables, x, train=False)
        ok = jnp.ones(y.shape, bool) if valid is None else valid
        hit = (jnp.argmax(logits, -1) == y) & ok
        return jnp.sum(hit, dtype=jnp.int32), jnp.sum(ok, dtype=jnp.int32)

    return correct


def pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    """``a`` (n, ...) with zero rows appended up to ``rows`` (n <= rows); ``a`` itself when
    n == rows."""
    if len(a) == rows:
        return a
    out = np.zeros((rows, *a.shape[1:]), a.dtype)
    out[:len(a)] = a
    return out


def train_imagenet(config: dict, report: Report | None = None,
                   should_stop: Callable[[], bool] | None = None) -> dict:
    """Train one (arch, transform, subset, seed) cell with the recipe; report after each
    evaluation (step, epoch, train_loss, train_acc, test_acc, test_error, lr, best_test_acc)
    and checkpoint. ``should_stop`` (a stop request, orchestrator/stopping.py; cheap, read
    after every step) once true: a checkpoint of the current step, also inside an epoch (an
    epoch of the paper preset outlasts the driver's grace), is saved and reported, and the run
    returns with status ``interrupted``; resumed from it, the run ends as an uninterrupted one
    would (batch s is a function of (seed, s); the epoch's running train loss and accuracy are
    in the checkpoint). Returns the final metrics: status, best_test_acc, test_acc, test_error,
    train_acc, train_loss, steps, epochs_done, train_size, test_size, batch_size, lr_peak,
    n_params, wall_s, images_per_s, history. Raises `ConfigError` / `DataError` for bad
    config or data (one line, naming the fix)."""
    import grain
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    t0 = time.perf_counter()
    cfg = resolve_config(config)
    pidx, pcount = jax.process_index(), jax.process_count()
    root = resolve_data_dir(str(cfg["data_dir"]), cfg["cache_dir"])
    train_f = scan_split(root, "train", num_classes=cfg["num_classes"])
    val_f = scan_split(root, "val", num_classes=cfg["num_classes"],
                       classes=train_f.classes)
    num_classes = int(cfg["num_classes"] or len(train_f.classes))
    m = subset_size(len(train_f), int(cfg["subset"]))
    train_idx = nested_subset(train_f.labels, m, int(cfg["subset_seed"]))
    val_idx = (nested_subset(val_f.labels, min(int(cfg["test_size"]), len(val_f)), 0)
               if cfg["test_size"] else None)
    n_test = len(val_f) if val_idx is None else len(val_idx)

    s = int(cfg["image_size"])
    tau = None if cfg["transform"] == "identity" else make_transform(
        cfg["transform"], int(cfg["transform_seed"]), (s, s, 3))
    batch = min(int(cfg["batch_size"]), m)
    devices = jax.devices()
    if batch % len(devices):
        raise ConfigError(f"batch {batch} does not divide over {len(devices)} devices; pick a "
                          "batch_size that does (and a subset with at least that many images)")
    steps_per_epoch = m // batch
    epochs = int(cfg["epochs"])
    total = epochs * steps_per_epoch
    if cfg["max_train_steps"]:
        total = min(total, int(cfg["max_train_steps"]))
    sched = lr_schedule(float(cfg["base_lr"]), batch, steps_per_epoch, epochs,
                        float(cfg["warmup_epochs"]))
    tx = optax.sgd(sched, momentum=float(cfg["momentum"]), nesterov=bool(cfg["nesterov"]))

    model = make_imagenet_model(cfg["arch"], num_classes=num_classes, width=cfg["width"],
                                depth=cfg["depth"], patch_size=cfg["patch_size"])
    variables = init_variables(model, jax.random.key(int(cfg["seed"])), (s, s, 3))
    params = variables["params"]
    state = {"params": params, "batch_stats": variables.get("batch_stats", {}),
             "opt_state": tx.init(params)}
    sci = {k: cfg[k] for k in _SCIENTIFIC}
    sci["num_classes"] = num_classes

    step, best, history = 0, {"best_test_acc": float("nan"), "best_epoch": 0}, []
    # the train loss, correct, seen and steps summed since the last evaluation, in every
    # checkpoint; one written before they were kept has none: the first train_loss and
    # train_acc after such a resume cover only the steps since. (One process: several would
    # each read the stop on their own and could stop at different steps; see the docstring.)
    since_eval: list = [0.0, 0, 0, 0]
    if cfg["resume_from"]:
        load_resume_meta(str(cfg["resume_from"]), sci)
        state, meta = load_checkpoint(str(cfg["resume_from"]), state)
        step, best, history = int(meta["step"]), meta["best"], meta["history"]
        since_eval = list(meta.get("since_eval", since_eval))

    mesh = Mesh(np.asarray(devices), ("batch",))
    data_sh = NamedSharding(mesh, PartitionSpec("batch"))
    repl = NamedSharding(mesh, PartitionSpec())
    state = jax.device_put(state, repl)
    train_step = make_step(model, tx, float(cfg["weight_decay"]), num_classes)
    count_correct = make_eval(model)

    ds = train_pipeline(train_f, train_idx, image_size=s, batch_size=batch,
                        seed=int(cfg["seed"]), epochs=epochs, tau=tau,
                        process_index=pidx, process_count=pcount, batched=False)
    opts = grain.ReadOptions(num_threads=int(cfg["loader_threads"]),
                             prefetch_buffer_size=2 * int(cfg["loader_threads"]))

    # Evaluation is sharded like training: every batch (the last one too) is padded with
    # masked rows to eval_rows, a multiple of the local devices, so any eval_batch_size and
    # any number of val images divide over the devices, and every batch has one shape (one
    # compilation). The sums come out of the jitted function already global.
    procs = int(cfg["loader_processes"])
    ev_local = int(cfg["eval_batch_size"])
    n_local = jax.local_device_count()
    eval_rows = -(-ev_local // n_local) * n_local

    def evaluate() -> float:
        ev = eval_pipeline(val_f, val_idx, image_size=s, batch_size=ev_local,
                           tau=tau, process_index=pidx, process_count=pcount)
        hits, seen = 0, 0
        # with loader processes, evaluation decodes in them too (it is all decoding: 50,000
        # val images an epoch against m_11 = 28,310 training images at the smallest subset)
        batches = iter(in_processes(ev, procs) if procs else ev.to_iter_dataset(opts))
        try:
            for b in batches:
                n = len(b["label"])
                valid = np.arange(eval_rows) < n
                arrs = [jax.make_array_from_process_local_data(data_sh, a) for a in
                        (pad_rows(b["image"], eval_rows), pad_rows(b["label"], eval_rows),
                         valid)]
                h, c = count_correct(state["params"], state["batch_stats"], *arrs)
                hits, seen = hits + int(h), seen + int(c)
        finally:
            batches.close()  # the worker processes end here, not at garbage collection
        return float(hits / max(seen, 1))

    work_dir = cfg["work_dir"] or tempfile.mkdtemp(prefix="symsweep-imagenet-")
    own_dir = not cfg["work_dir"]
    written: list[str] = []
    status, error = Status.COMPLETED, None
    ep_loss, ep_correct, ep_seen, ep_steps = (float(since_eval[0]), int(since_eval[1]),
                                              int(since_eval[2]), int(since_eval[3]))
    images = 0
    last: dict[str, Any] = history[-1] if history else {}
    t_train = time.perf_counter()
    it = None
    try:
        it = stream_batches(ds, batch // pcount, step, total, threads=int(cfg["loader_threads"]),
                            processes=int(cfg["loader_processes"]))
        while step < total:
            b = next(it)
            x = jax.make_array_from_process_local_data(data_sh, b["image"])
            y = jax.make_array_from_process_local_data(data_sh, b["label"])
            state, out = train_step(state, x, y)
            step += 1
            images += batch
            loss = float(out["loss"])
            if not math.isfinite(loss):
                status, error = Status.DIVERGED, f"non-finite training loss at step {step}; stopped"
                break
            ep_loss += float(out["ce"])
            ep_correct += int(out["correct"])
            ep_seen += batch
            ep_steps += 1
            at_epoch_end = step % steps_per_epoch == 0 or step == total
            epoch = step / steps_per_epoch
            ep_i = math.ceil(epoch)
            do_eval = at_epoch_end and (ep_i % int(cfg["eval_every_epochs"]) == 0
                                        or step == total)
            do_ckpt = at_epoch_end and (ep_i % int(cfg["checkpoint_every_epochs"]) == 0
                                        or step == total)
            metrics = None
            if do_eval:
                acc = evaluate()
                if not best["best_test_acc"] >= acc:  # also true while best is nan
                    best = {"best_test_acc": acc, "best_epoch": epoch}
                last = {"step": step, "epoch": epoch, "train_loss": ep_loss / max(ep_steps, 1),
                        "train_acc": ep_correct / max(ep_seen, 1), "test_acc": acc,
                        "test_error": 1.0 - acc, "lr": float(sched(step - 1)), **best}
                history.append(last)
                metrics = dict(last)
                ep_loss, ep_correct, ep_seen, ep_steps = 0.0, 0, 0, 0
            # a stop request: this step gets a checkpoint (also inside an epoch), then return
            interrupted = step < total and should_stop is not None and should_stop()
            ckpt = None
            if (do_ckpt or interrupted) and (report is not None or cfg["work_dir"]):
                meta = {"step": step, "best": best, "history": history, "config": sci,
                        "since_eval": [ep_loss, ep_correct, ep_seen, ep_steps]}
                ckpt = save_checkpoint(os.path.join(work_dir, f"checkpoint_{step:09d}"),
                                       jax.device_get(state), meta)
                written.append(ckpt)
                metrics = metrics or {"step": step, "epoch": epoch, **best}
            if report is not None and metrics is not None:
                report(metrics, ckpt)
            keep = int(cfg["keep_checkpoints"] or 0)
            while keep and len(written) > keep:
                shutil.rmtree(written.pop(0), ignore_errors=True)
            if interrupted:
                status = Status.INTERRUPTED
                error = (f"stopped on a stop request at step {step}; " +
                         (f"the next attempt continues from its checkpoint of step {step}"
                          if ckpt else "no checkpoint (no report, no work_dir): the next "
                          "attempt starts over"))
                break
    finally:
        if it is not None:
            it.close()  # stops the loader's threads or worker processes now, not at gc
        if own_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
    train_s = time.perf_counter() - t_train
    best_train = max((h.get("train_acc", float("nan")) for h in history), default=float("nan"))
    n_params = int(sum(np.prod(a.shape) for a in jax.tree_util.tree_leaves(state["params"])))
    return {
        "status": status, "error": error,
        "success": bool(best_train >= float(cfg["success_train_acc"])),
        "best_test_acc": best["best_test_acc"], "best_epoch": best["best_epoch"],
        "test_acc": last.get("test_acc", float("nan")),
        "test_error": last.get("test_error", float("nan")),
        "train_acc": last.get("train_acc", float("nan")),
        "best_train_acc": best_train,
        "train_loss": last.get("train_loss", float("nan")), "steps": step,
        "epochs_done": step / steps_per_epoch, "train_size": m, "test_size": n_test,
        "batch_size": batch, "steps_per_epoch": steps_per_epoch,
        "lr_peak": float(cfg["base_lr"]) * batch / 256.0, "n_params": n_params,
        "wall_s": time.perf_counter() - t0,
        "images_per_s": images / train_s if train_s > 0 and images else float("nan"),
        "history": history,
    }


__all__ = ["DEFAULTS", "lr_schedule", "make_eval", "make_step", "pad_rows", "resolve_config",
           "train_imagenet", "weight_penalty"]
