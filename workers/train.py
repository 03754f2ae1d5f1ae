"""The SGD worker: finite networks trained as in the paper (inference `nn` and `nn_plus`).

Loss per step on a batch B: 1/(2 K |B|) sum_{(x,y) in B} |f(x) - y|^2 + lambda/2 ||theta||^2
(theta = all standardised parameters omega, beta of the NTK parameterisation), SGD with
momentum 0.9 (optax), learning rate c * eta_0 with

    eta_0 = 2 n K / lambda_max(Theta_hat),

Theta_hat the logit-traced empirical NTK at initialisation on n training points, found by
Lanczos on NTK-vector products (workers/eta0.py, where the normalisation is derived). The
trainer's checkpoints are workers/checkpoint.py.

Determinism: the batch at step s is rows perm_e[(s mod S) B : (s mod S + 1) B] with
e = s // S, S = N // B and perm_e a permutation drawn from fold_in(data_key, e); data_key comes
from the seed. So the run is a pure function of (config, step) and a run split into pieces
(checkpoints, resume) is bit-identical to an uninterrupted one.

Entry points: `train(config, report)` = `workers.data.build_dataset(config)` + `train_arrays`.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from workers.checkpoint import load_checkpoint, load_resume_meta, save_checkpoint
from workers.errors import ConfigError
from workers.eta0 import estimate_eta0
from workers.metrics import accuracy, mse
from workers.models import count_params, init_params, make_model
from workers.vocab import FINITE_INFERENCES, INFERENCE_DEFAULTS, PAPER_WIDTHS, Status

Report = Callable[[dict, "str | None"], None]

# the inferences this worker runs; c (learning-rate factor) and lambda (L2) of each are
# INFERENCE_DEFAULTS (docs/protocol.md, "I")
INFERENCES: tuple[str, ...] = FINITE_INFERENCES

DEFAULTS: dict[str, Any] = {
    "arch": "fcn",
    "width": None,             # None: the paper width of the arch
    "depth": 8,
    "w_var": 2.0,
    "b_var": 0.01,
    "first_layer_init": "gaussian",
    "inference": "nn",
    "seed": 0,
    "max_steps": 1_000_000,
    "eval_every": 1000,
    "checkpoint_every": None,  # None: no checkpoints
    "batch_size": 40,
    "momentum": 0.9,
    "lr_factor": None,         # None: 1 (nn) or 8 (nn_plus)
    "l2": None,                # None: 0 (nn) or 1e-7 (nn_plus)
    "eta0": None,              # None: estimate from the empirical NTK
    "eta0_samples": 256,       # n, training points for Theta_hat
    "eta0_inits": 3,           # initialisations averaged
    "eta0_seed": 0,            # the estimate is a property of the cell, not of the run seed
    "train_eval_size": None,   # None: training accuracy on the full training set
    "eval_batch_size": 500,
    "diverge_loss": 1e4,       # a batch loss above this (or non-finite) counts as divergence
    "early_stop_train_acc": 1.0,
    "success_train_acc": 0.95,
    "resume_from": None,
    "work_dir": None,          # where checkpoints are written; None: a temporary dir, removed
                               # at the end (the report callback must copy what it keeps:
                               # the runner puts each into the trial-keyed store at once)
    "keep_checkpoints": 2,
    "store_predictions": False,  # also return the final test predictions ("predictions")
}

# Config keys that must agree between a checkpoint and the run resuming from it.
_SCIENTIFIC = ("arch", "width", "depth", "w_var", "b_var", "first_layer_init", "inference",
               "seed", "batch_size", "momentum", "lr_factor", "l2", "dataset", "train_size",
               "image_size", "flip", "transform", "transform_seed", "subset_seed", "path_t",
               "val_size", "test_size", "synthetic_seed")


# ----------------------------------------------------------------------------- config


def resolve_config(config: dict) -> dict:
    """Defaults filled in and values checked; raises ConfigError with a fix on bad input."""
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    if cfg["inference"] not in INFERENCES:
        raise ConfigError(f"train() runs inference nn or nn_plus, got {cfg['inference']!r}; "
                          "ntk/nngp are kernel regression (workers.regression)")
    for k, v in INFERENCE_DEFAULTS[cfg["inference"]].items():
        if config.get(k) is None:
            cfg[k] = v
    if cfg["arch"] not in PAPER_WIDTHS:
        raise ConfigError(f"unknown arch {cfg['arch']!r}; use one of "
                          f"{', '.join(PAPER_WIDTHS)}")
    if cfg["width"] is None:
        cfg["width"] = PAPER_WIDTHS[cfg["arch"]]
    for k in ("max_steps", "eval_every", "batch_size", "eta0_samples", "eta0_inits",
              "eval_batch_size"):
        cfg[k] = int(cfg[k])
    if cfg["max_steps"] < 0 or cfg["eval_every"] < 1 or cfg["batch_size"] < 1:
        raise ConfigError("need max_steps >= 0, eval_every >= 1 and batch_size >= 1, got "
                          f"{cfg['max_steps']}, {cfg['eval_every']}, {cfg['batch_size']}")
    if cfg["checkpoint_every"] is not None:
        cfg["checkpoint_every"] = int(cfg["checkpoint_every"])
        if cfg["checkpoint_every"] < 1:
            raise ConfigError(f"checkpoint_every must be >= 1 or None, got "
                              f"{cfg['checkpoint_every']}")
    if cfg["eta0"] is not None and not (float(cfg["eta0"]) > 0):
        raise ConfigError(f"eta0 must be a positive number or None, got {cfg['eta0']!r}")
    return cfg


# ----------------------------------------------------------------------------- the SGD loop


def _sgd(lr: Any, momentum: Any) -> optax.GradientTransformation:
    """The paper's optimiser: heavy-ball SGD, v = g + m v, theta -= lr v (optax.sgd)."""
    return optax.sgd(lr, momentum=momentum)


def _objective(model: Any, params: Any, xb: jax.Array, yb: jax.Array, l2: Any) -> tuple:
    """(1/(2 K B) sum |f(x) - y|^2 + l2/2 ||theta||^2, its data term) on a batch."""
    f = model.apply({"params": params}, xb)
    data = 0.5 * jnp.mean(jnp.square(f - yb))
    if isinstance(l2, (int, float)) and l2 == 0:
        return data, data
    return data + 0.5 * l2 * _sum_sq(params), data


def _sum_sq(params: Any) -> jax.Array:
    """||theta||^2 over all parameter leaves."""
    return sum(jnp.sum(jnp.square(p)) for p in jax.tree_util.tree_leaves(params))


def batch_loss(model: Any, params: Any, xb: jax.Array, yb: jax.Array, l2: Any) -> jax.Array:
    """1/(2 K B) sum |f(x) - y|^2 + l2/2 ||theta||^2 on a batch (B, H, W, C), (B, K)."""
    return _objective(model, params, xb, yb, l2)[0]


def _grad_and_data_loss(model: Any) -> Callable:
    """(params, xb, yb, l2) -> (gradient of `batch_loss`, its data term 1/(2KB) sum |f - y|^2).

    The training loops monitor the data term only: returning the L2 term too would cost one
    more pass over all parameters per step (+7 to 12% per step for fcn at width 1024, measured
    here), while its gradient l2 * theta fuses into the update for free."""
    return jax.grad(partial(_objective, model), has_aux=True)


def _epoch_perm(data_key: jax.Array, epoch: jax.Array, n: int) -> jax.Array:
    return jax.random.permutation(jax.random.fold_in(data_key, epoch), n)


@functools.lru_cache(maxsize=32)
def _compiled_run(model: Any, n: int, bs: int, use_momentum: bool, use_l2: bool) -> Callable:
    """One compiled SGD loop per (model, N, B, momentum or not, L2 or not); data, key and
    hyper-parameters are arguments, so trainers differing only in those share the compilation
    and the data are never baked into the program as constants."""
    spe = n // bs

    def run(state: dict, x: jax.Array, y: jax.Array, data_key: jax.Array, hp: dict,
            start: jax.Array, n_steps: jax.Array) -> tuple:
        tx = _sgd(hp["lr"], hp["momentum"] if use_momentum else None)
        grad_fn = _grad_and_data_loss(model)

        end = start + n_steps

        def step_fn(perm: jax.Array, c: tuple) -> tuple:
            step, st, loss_sum, bad_step, bad_loss = c
            idx = jax.lax.dynamic_slice(perm, ((step % spe) * bs,), (bs,))
            g, loss = grad_fn(st["params"], x[idx], y[idx], hp["l2"] if use_l2 else 0.0)
            updates, opt_state = tx.update(g, st["opt_state"], st["params"])
            params = optax.apply_updates(st["params"], updates)
            bad = ~jnp.isfinite(loss) | (loss > hp["diverge_loss"])
            bad_step = jnp.where(bad, step, bad_step)
            bad_loss = jnp.where(bad, loss, bad_loss)
            new = {"params": params, "opt_state": opt_state}
            return step + 1, new, loss_sum + jnp.where(bad, 0.0, loss), bad_step, bad_loss

        def epoch_fn(c: tuple) -> tuple:
            # one epoch (or the part of it inside [start, end)): the permutation is drawn once
            epoch = c[0] // spe
            perm = _epoch_perm(data_key, epoch, n)
            stop = jnp.minimum(end, (epoch + 1) * spe)
            return jax.lax.while_loop(lambda c: (c[0] < stop) & (c[3] < 0),
                                      partial(step_fn, perm), c)

        dt = x.dtype
        c0 = (start, state, jnp.zeros((), dt), jnp.asarray(-1, jnp.int32), jnp.zeros((), dt))
        step, st, loss_sum, bad_step, bad_loss = jax.lax.while_loop(
            lambda c: (c[0] < end) & (c[3] < 0), epoch_fn, c0)
        return st, step - start, loss_sum, bad_step, bad_loss

    return jax.jit(run, donate_argnums=(0,))


@functools.lru_cache(maxsize=32)
def _compiled_step(model: Any, use_momentum: bool, use_l2: bool) -> Callable:
    """One SGD step on the rows idx (B,) of x, y: the host-loop variant of `_compiled_run`."""

    def one(state: dict, x: jax.Array, y: jax.Array, idx: jax.Array, hp: dict) -> tuple:
        tx = _sgd(hp["lr"], hp["momentum"] if use_momentum else None)
        g, loss = _grad_and_data_loss(model)(
            state["params"], x[idx], y[idx], hp["l2"] if use_l2 else 0.0)
        updates, opt_state = tx.update(g, state["opt_state"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates),
                "opt_state": opt_state}, loss

    return jax.jit(one, donate_argnums=(0,))


@functools.lru_cache(maxsize=32)
def _compiled_apply(model: Any) -> Callable:
    return jax.jit(lambda p, x: model.apply({"params": p}, x))


class Trainer:
    """Jit-compiled SGD on data kept on the device.

    ``run(state, start_step, n_steps)`` does n_steps steps and stops at the first step whose
    batch loss is non-finite or above ``diverge_loss``. ``state`` = {"params", "opt_state"}.

    ``loop="device"``: all steps inside one `lax.while_loop` (one compilation for any n_steps,
    shared by trainers of the same model and data shape; no host round trip per step).
    ``loop="host"``: one compiled step per Python call. XLA's CPU backend runs convolutions
    inside a while loop about 25x slower than the same convolution at top level (measured here:
    gap, width 64, 8x8, batch 40: 1.9 CPU s/step in the loop, 0.078 s called per step), so
    ``loop="auto"`` (default) picks "host" on CPU and "device" elsewhere. Each mode is
    bit-reproducible however a run is split; the two modes may differ by rounding.
    """

    def __init__(self, model: Any, x_train: np.ndarray, y_train: np.ndarray, *, lr: float,
                 batch_size: int = 40, momentum: float = 0.9, l2: float = 0.0, seed: int = 0,
                 diverge_loss: float = 1e4, data_key: jax.Array | None = None,
                 loop: str = "auto") -> None:
        self.model = model
        if loop == "auto":
            loop = "host" if jax.default_backend() == "cpu" else "device"
        if loop not in ("host", "device"):
            raise ConfigError(f"loop must be auto, host or device, got {loop!r}")
        self.loop = loop
        dt = model.param_dtype
        self.x = jnp.asarray(x_train, dt)
        self.y = jnp.asarray(y_train, dt)
        self.n = int(self.x.shape[0])
        if self.n < 1:
            raise ConfigError("the training set is empty; set train_size >= 1")
        self.batch_size = min(int(batch_size), self.n)
        self.steps_per_epoch = self.n // self.batch_size
        self.lr, self.momentum, self.l2 = float(lr), float(momentum), float(l2)
        self.tx = _sgd(self.lr, self.momentum or None)
        self.data_key = (jax.random.fold_in(jax.random.key(int(seed)), 1)
                         if data_key is None else data_key)
        self.diverge_loss = float(diverge_loss)
        self._run = _compiled_run(model, self.n, self.batch_size, bool(self.momentum),
                                  bool(self.l2))
        self._step = _compiled_step(model, bool(self.momentum), bool(self.l2))
        self._predict = _compiled_apply(model)

    def apply(self, params: Any, x: jax.Array) -> jax.Array:
        """Logits (N, K) for x (N, H, W, C)."""
        return self._predict(params, x)

    def init_state(self, params: Any) -> dict:
        """A fresh optimiser state for (a copy of) params."""
        params = jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True), params)
        return {"params": params, "opt_state": self.tx.init(params)}

    def loss(self, params: Any, xb: jax.Array, yb: jax.Array) -> jax.Array:
        """1/(2 K B) sum |f(x) - y|^2 + l2/2 ||theta||^2 on a batch (B, H, W, C), (B, K)."""
        return batch_loss(self.model, params, xb, yb, self.l2)

    def epoch_perm(self, epoch: jax.Array) -> jax.Array:
        """The data order of an epoch: a permutation of range(N) from fold_in(data_key, e)."""
        return _epoch_perm(self.data_key, epoch, self.n)

    def batch_indices(self, step: int) -> np.ndarray:
        """Training rows used at a given step (for tests and the benchmark's bare loop)."""
        e, pos = divmod(int(step), self.steps_per_epoch)
        perm = np.asarray(self.epoch_perm(jnp.asarray(e)))
        return perm[pos * self.batch_size:(pos + 1) * self.batch_size]

    def run(self, state: dict, start_step: int, n_steps: int) -> tuple[dict, dict]:
        """Advance ``state`` (consumed: its buffers are donated) from start_step by n_steps.

        Returns (new_state, info) with info = {"steps_done", "loss_sum" and "mean_loss" (of the
        data loss over the good steps), "bad_step" (-1 if none), "bad_loss"}; after a bad step
        the loop stops and the state is not usable.
        """
        dt = self.x.dtype
        hp = {k: jnp.asarray(v, dt) for k, v in (("lr", self.lr), ("momentum", self.momentum),
                                                  ("l2", self.l2),
                                                  ("diverge_loss", self.diverge_loss))}
        if self.loop == "host":
            return self._run_host(state, int(start_step), int(n_steps), hp)
        st, i, loss_sum, bad_step, bad_loss = self._run(
            state, self.x, self.y, self.data_key, hp, jnp.asarray(start_step, jnp.int32),
            jnp.asarray(n_steps, jnp.int32))
        done = int(i) - (1 if int(bad_step) >= 0 else 0)
        return st, {"steps_done": done, "loss_sum": float(loss_sum),
                    "mean_loss": float(loss_sum) / max(done, 1),
                    "bad_step": int(bad_step), "bad_loss": float(bad_loss)}

    # steps dispatched between two reads of the losses: reading a loss waits for its step, so
    # reading every step would keep JAX from queueing the next step while this one runs
    host_sync_every = 16

    def _run_host(self, state: dict, start: int, n_steps: int, hp: dict) -> tuple[dict, dict]:
        bs, spe = self.batch_size, self.steps_per_epoch
        perm, epoch, loss_sum, done = None, -1, 0.0, 0
        pending: list[jax.Array] = []
        end = start + n_steps
        for step in range(start, end):
            if step // spe != epoch:
                epoch = step // spe
                perm = self.epoch_perm(jnp.asarray(epoch))
            pos = step % spe
            state, loss = self._step(state, self.x, self.y, perm[pos * bs:(pos + 1) * bs], hp)
            pending.append(loss)
            if len(pending) < self.host_sync_every and step + 1 < end:
                continue
            # steps after a bad one ran on a broken state; the caller discards it
            for loss in map(float, jax.device_get(pending)):
                if not math.isfinite(loss) or loss > self.diverge_loss:
                    return state, {"steps_done": done, "loss_sum": loss_sum,
                                   "mean_loss": loss_sum / max(done, 1),
                                   "bad_step": start + done, "bad_loss": loss}
                loss_sum += loss
                done += 1
            pending = []
        return state, {"steps_done": done, "loss_sum": loss_sum,
                       "mean_loss": loss_sum / max(done, 1), "bad_step": -1, "bad_loss": 0.0}

    def predict(self, params: Any, x: np.ndarray, batch: int = 500) -> np.ndarray:
        """Logits (N, K) for x (N, H, W, C), in fixed-size padded batches (one compilation)."""
        n = int(x.shape[0])
        if n == 0:
            return np.zeros((0, self.model.num_classes), np.float32)
        b = min(batch, n)
        outs = []
        for s in range(0, n, b):
            xb = np.asarray(x[s:s + b])
            pad = b - xb.shape[0]
            if pad:
                xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
            outs.append(np.asarray(self._predict(params, jnp.asarray(xb, self.x.dtype)))[:b - pad])
        return np.concatenate(outs)


def _scores(logits: np.ndarray, y: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(accuracy, MSE) of logits (N, K) against targets y (N, K); MSE is the mean over N K."""
    return accuracy(logits, labels), mse(logits, y, dtype=logits.dtype)



# ----------------------------------------------------------------------------- the worker


# Steps in one run of the compiled loop at most, between two checks of a stop request: well
# inside the driver's grace (stopping.DEFAULT_GRACE_S) at any preset's step time. The runs are
# cut at its multiples whether or not a stop is asked for, and the training loss is summed over
# them, so the numbers do not depend on it (one host sync per run: no cost worth measuring).
STOP_CHECK_STEPS = 500


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    return v


def train_arrays(config: dict, dataset: Any, report: Report | None = None, *,
                 init: Any = None, should_stop: Callable[[], bool] | None = None) -> dict:
    """Train on an in-memory dataset (attributes x_/y_/labels_ train, val, test; x (N, H, W, C)
    float, y (N, K) one-hot minus 0.1, labels (N,) int).

    ``init`` optionally replaces the initial parameters drawn from the seed (Theorem 4.1 tests).
    ``should_stop`` (the sweep was asked to stop; orchestrator/stopping.py) is checked after
    each run of steps (cut at the multiples of `STOP_CHECK_STEPS`, eval_every and
    checkpoint_every, whether or not a stop comes): once true, a checkpoint of the current
    step is saved and reported (when checkpointing) and training returns with status
    ``interrupted``; resuming from that checkpoint gives the uninterrupted run's result, bit
    for bit (train_loss included: the checkpoint carries the loss summed so far).
    Returns the final metrics: status, success, best_test_acc, best_train_acc, best_step,
    test_acc, test_mse, val_acc, val_mse, train_acc, train_loss, steps, eta0, lr, l2, error,
    wall_s, n_params, eta0_seconds, history (list of the evaluation records) and checkpoint
    (the last checkpoint directory or None); with config ``store_predictions`` also
    predictions, the final model's test outputs (N_test, K) float32. ``train_loss`` is the
    mean data loss 1/(2KB) sum |f - y|^2 over the steps since the previous evaluation (the
    L2 term is left out; each evaluation record has it as ``l2_term``, l2/2 ||theta||^2);
    ``*_mse`` are means over N x K entries of (f(x) - y)^2; accuracies and MSEs of an empty
    split (e.g. val_size=0) are NaN.
    """
    t_start = time.perf_counter()
    cfg = resolve_config(config)
    image_shape = tuple(int(s) for s in np.shape(dataset.x_train)[1:])
    num_classes = int(np.shape(dataset.y_train)[1])
    model = make_model(cfg["arch"], cfg["width"], depth=cfg["depth"], w_var=cfg["w_var"],
                       b_var=cfg["b_var"], first_layer_init=cfg["first_layer_init"],
                       num_classes=num_classes)
    sci = {k: _jsonable(cfg.get(k)) for k in _SCIENTIFIC}

    params0 = init if init is not None else init_params(model, (int(cfg["seed"]), 0),
                                                        image_shape)

    resume_meta = None
    if cfg["resume_from"]:
        resume_meta = load_resume_meta(str(cfg["resume_from"]), sci)
        tx = optax.sgd(1.0, momentum=float(cfg["momentum"]) or None)
        template = {"params": params0, "opt_state": tx.init(params0)}
        state_r, resume_meta = load_checkpoint(str(cfg["resume_from"]), template)

    eta0_info: dict = {"seconds": 0.0, "lambda_max": None}
    if resume_meta is not None:
        eta0 = float(resume_meta["eta0"])
    elif cfg["eta0"] is not None:
        eta0 = float(cfg["eta0"])
    else:
        n = min(cfg["eta0_samples"], int(np.shape(dataset.x_train)[0]))
        rows = np.sort(np.random.default_rng(int(cfg["eta0_seed"])).choice(
            np.shape(dataset.x_train)[0], n, replace=False))
        eta0_info = estimate_eta0(model, np.asarray(dataset.x_train)[rows],
                                  inits=cfg["eta0_inits"], seed=int(cfg["eta0_seed"]))
        eta0 = eta0_info["eta0"]
        if not math.isfinite(eta0) or eta0 <= 0:
            raise ConfigError(f"eta_0 estimate is {eta0}; check the data (non-finite inputs?)")
    lr = float(cfg["lr_factor"]) * eta0

    trainer = Trainer(model, dataset.x_train, dataset.y_train, lr=lr,
                      batch_size=cfg["batch_size"], momentum=cfg["momentum"], l2=cfg["l2"],
                      seed=int(cfg["seed"]), diverge_loss=cfg["diverge_loss"])
    n_train = trainer.n
    if cfg["train_eval_size"] and int(cfg["train_eval_size"]) < n_train:
        rows = np.sort(np.random.default_rng(int(cfg["seed"])).choice(
            n_train, int(cfg["train_eval_size"]), replace=False))
    else:
        rows = np.arange(n_train)
    x_tr_eval, y_tr_eval = np.asarray(dataset.x_train)[rows], np.asarray(dataset.y_train)[rows]
    l_tr_eval = np.asarray(dataset.labels_train)[rows]

    best = {"best_test_acc": float("nan"), "best_train_acc": float("nan"), "best_step": 0}
    history: list[dict] = []
    if resume_meta is not None:
        state = state_r
        step = int(resume_meta["step"])
        best = resume_meta["best"]
        history = resume_meta["history"]
        # the loss summed since the last evaluation; a checkpoint written before it was kept
        # has none: the first train_loss after such a resume covers only the steps since
        loss_acc = [float(v) for v in resume_meta.get("loss_acc", (0.0, 0))]
        trainer.data_key = jax.random.wrap_key_data(
            jnp.asarray(np.asarray(resume_meta["data_key"], np.uint32)))
    else:
        state = trainer.init_state(params0)
        step = 0
        loss_acc = [0.0, 0]  # data loss summed over the steps since the last evaluation, count

    work_dir = cfg["work_dir"]
    checkpointing = cfg["checkpoint_every"] is not None and (report is not None or work_dir)
    own_dir = bool(checkpointing and not work_dir)
    if own_dir:  # only the report callback sees these checkpoints (the runner copies them)
        work_dir = tempfile.mkdtemp(prefix="symsweep-train-")
    written: list[str] = []
    status, error, last_ckpt = Status.COMPLETED, None, None
    last = history[-1] if history else {}
    train_loss = float("nan")
    ev, ck = cfg["eval_every"], cfg["checkpoint_every"]

    def evaluate(params: Any, at: int, loss: float) -> dict:
        tr = _scores(trainer.predict(params, x_tr_eval, cfg["eval_batch_size"]),
                     y_tr_eval, l_tr_eval)
        va = _scores(trainer.predict(params, dataset.x_val, cfg["eval_batch_size"]),
                     dataset.y_val, dataset.labels_val)
        te = _scores(trainer.predict(params, dataset.x_test, cfg["eval_batch_size"]),
                     dataset.y_test, dataset.labels_test)
        l2_term = 0.5 * float(cfg["l2"]) * float(_sum_sq(params)) if cfg["l2"] else 0.0
        rec = {"step": at, "train_loss": loss, "l2_term": l2_term,
               "train_acc": tr[0], "train_mse": tr[1],
               "val_acc": va[0], "val_mse": va[1], "test_acc": te[0], "test_mse": te[1]}
        if not best["best_test_acc"] >= te[0]:     # also true while best is nan
            best["best_test_acc"], best["best_step"] = te[0], at
        if not best["best_train_acc"] >= tr[0]:
            best["best_train_acc"] = tr[0]
        return {**rec, **best}

    try:
        while step < cfg["max_steps"]:
            nxt = min(cfg["max_steps"], (step // ev + 1) * ev)
            if ck is not None:
                nxt = min(nxt, (step // ck + 1) * ck)
            nxt = min(nxt, (step // STOP_CHECK_STEPS + 1) * STOP_CHECK_STEPS)
            state, info = trainer.run(state, step, nxt - step)
            if info["bad_step"] >= 0:
                status = Status.DIVERGED
                kind = "non-finite" if not math.isfinite(info["bad_loss"]) else "exploding"
                error = (f"{kind} training loss {info['bad_loss']:.4g} at step {info['bad_step']} "
                         f"(lr {lr:.4g}); stopped")
                step = info["bad_step"]
                break
            step = nxt
            loss_acc = [loss_acc[0] + info["loss_sum"], loss_acc[1] + info["steps_done"]]
            train_loss = loss_acc[0] / max(loss_acc[1], 1)
            metrics = None
            if step % ev == 0 or step == cfg["max_steps"]:
                last = evaluate(state["params"], step, train_loss)
                loss_acc = [0.0, 0]
                history.append(last)
                metrics = dict(last)
            stop = bool(last) and last.get("step") == step and \
                last["train_acc"] >= cfg["early_stop_train_acc"]
            # a stop request: this step gets a checkpoint (also off the schedule), then return
            interrupted = not stop and step < cfg["max_steps"] and should_stop is not None \
                and should_stop()
            ckpt_dir = None
            if checkpointing and ck is not None and (step % ck == 0 or interrupted):
                meta = {"step": step, "best": best, "history": history, "eta0": eta0,
                        "config": sci, "loss_acc": loss_acc,
                        "data_key": np.asarray(jax.random.key_data(trainer.data_key)).tolist()}
                ckpt_dir = save_checkpoint(os.path.join(work_dir, f"checkpoint_{step:09d}"),
                                           state, meta)
                last_ckpt = ckpt_dir
                written.append(ckpt_dir)
                if metrics is None:
                    metrics = {"step": step, "train_loss": train_loss, **best}
            if report is not None and metrics is not None:
                report({**metrics, "eta0": eta0, "lr": lr}, ckpt_dir)
            keep = cfg["keep_checkpoints"]
            while keep and len(written) > int(keep):
                shutil.rmtree(written.pop(0), ignore_errors=True)
            if stop:
                break
            if interrupted:
                status = Status.INTERRUPTED
                error = (f"stopped on a stop request at step {step}; " +
                         (f"the next attempt continues from its checkpoint of step {step}"
                          if checkpointing else "no checkpoint (checkpoint_every is None): "
                          "the next attempt starts over"))
                break
    finally:
        if own_dir:  # a temporary dir per run would otherwise fill a node's disk
            shutil.rmtree(work_dir, ignore_errors=True)
            last_ckpt = None

    final = last if last else {"train_acc": float("nan"), "train_mse": float("nan"),
                               "val_acc": float("nan"), "val_mse": float("nan"),
                               "test_acc": float("nan"), "test_mse": float("nan")}
    best_train = best["best_train_acc"]
    out = {
        "status": status,
        "success": bool(best_train >= cfg["success_train_acc"]),
        "best_test_acc": best["best_test_acc"],
        "best_train_acc": best_train,
        "best_step": best["best_step"],
        "test_acc": final["test_acc"], "test_mse": final["test_mse"],
        "val_acc": final["val_acc"], "val_mse": final["val_mse"],
        "train_acc": final["train_acc"], "train_loss": final.get("train_loss", train_loss),
        "steps": int(step), "eta0": eta0, "lr": lr, "l2": float(cfg["l2"]),
        "eta0_seconds": eta0_info["seconds"], "eta0_lambda_max": eta0_info["lambda_max"],
        "n_params": count_params(state["params"]), "error": error,
        "wall_s": time.perf_counter() - t_start, "history": history,
        "checkpoint": last_ckpt,  # the last checkpoint's dir (None unless work_dir was given)
    }
    if cfg.get("store_predictions"):  # final-model test predictions (N_test, K), for ensembles
        out["predictions"] = trainer.predict(state["params"], dataset.x_test,
                                             cfg["eval_batch_size"]).astype(np.float32)
    return out


def train(config: dict, report: Report | None = None,
          should_stop: Callable[[], bool] | None = None) -> dict:
    """The worker entry point: build the dataset from config (workers.data.build_dataset) and
    train on it; see `train_arrays` for the returned metrics and DEFAULTS for config keys.
    ``dataset="imagenet"`` (an image folder, the recipe of Flax's ImageNet example) goes to
    `workers.imagenet_train.train_imagenet`, which reads ``should_stop`` after every step."""
    if config.get("dataset") == "imagenet":
        from workers.imagenet_train import train_imagenet

        return train_imagenet(config, report, should_stop=should_stop)
    from workers.data import build_dataset

    return train_arrays(config, build_dataset(config), report, should_stop=should_stop)


__all__ = ["DEFAULTS", "INFERENCES", "Trainer", "resolve_config", "train", "train_arrays"]
