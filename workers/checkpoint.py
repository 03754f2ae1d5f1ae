"""The SGD trainer's checkpoints: (params, opt_state) as one .npz of the state's leaves plus a
JSON meta file (the trainer writes step, best metrics, history, eta_0, the scientific config
and the data key), written to a temporary directory and renamed, so a reader never sees half a
checkpoint. Loading checks every array's shape and dtype against the model's own state and
refuses (`ConfigError`) a checkpoint of another config. The orchestrator copies them into its
trial-keyed store (orchestrator/checkpoints.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from workers.durable import fsync_tree, replace_durably
from workers.errors import ConfigError


def _tree_to_arrays(tree: Any) -> dict[str, np.ndarray]:
    return {f"a{i}": np.asarray(a) for i, a in enumerate(jax.tree_util.tree_leaves(tree))}


def _arrays_to_tree(template: Any, arrays: Any) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(template)
    if len(arrays.files) != len(leaves):
        raise ConfigError(f"checkpoint holds {len(arrays.files)} arrays, this model needs "
                          f"{len(leaves)}; resume with the config that wrote it")
    out = []
    for i, leaf in enumerate(leaves):
        a = arrays[f"a{i}"]
        if a.shape != leaf.shape or a.dtype != leaf.dtype:
            raise ConfigError(f"checkpoint array {i} is {a.dtype}{a.shape}, the model expects "
                              f"{leaf.dtype}{leaf.shape}; resume with the config that wrote it")
        out.append(jnp.asarray(a))
    return jax.tree_util.tree_unflatten(treedef, out)


def save_checkpoint(directory: str, state: dict, meta: dict) -> str:
    """Write state (params, opt_state) and meta (JSON) atomically to `directory`; returns it."""
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-ckpt-", dir=parent)
    try:
        np.savez(os.path.join(tmp, "state.npz"), **_tree_to_arrays(state))
        with open(os.path.join(tmp, "meta.json"), "w") as fh:
            json.dump(meta, fh)
        fsync_tree(tmp)  # the files on disk before the rename makes them the checkpoint
        if os.path.exists(directory):
            shutil.rmtree(directory)
        replace_durably(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_checkpoint_meta(directory: str) -> dict:
    """The JSON metadata of a checkpoint directory (step, best metrics, config, ...)."""
    sp, mp = os.path.join(directory, "state.npz"), os.path.join(directory, "meta.json")
    if not (os.path.isfile(sp) and os.path.isfile(mp)):
        raise ConfigError(f"resume_from={directory!r} is not a symsweep checkpoint (needs "
                          "state.npz and meta.json); pass a directory reported by train()")
    with open(mp) as fh:
        raw = fh.read()
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as ex:  # zero-length or cut short by a crash
        why = "zero-length" if not raw.strip() else ex.msg
        raise ConfigError(f"checkpoint metadata {mp} is damaged ({why}); resume from an "
                          "earlier checkpoint or from scratch") from None
    return meta


def load_resume_meta(directory: str, scientific: dict) -> dict:
    """The metadata of the checkpoint a trainer resumes from, after checking that it was
    written by the same scientific settings (``scientific``: the keys that define the run,
    e.g. arch, transform, seed, sizes). Raises ConfigError (one line) naming the keys that
    differ, since continuing another config's state would silently mix two experiments."""
    meta = load_checkpoint_meta(directory)
    diff = {k: (meta["config"].get(k), scientific.get(k)) for k in scientific
            if meta["config"].get(k) != scientific.get(k)}
    if diff:
        raise ConfigError(f"resume_from={directory!r} was written by a different config "
                          f"{diff}; resume with the same scientific settings")
    return meta


def load_checkpoint(directory: str, template: dict) -> tuple[dict, dict]:
    """(state, meta) from a directory written by `save_checkpoint`; state shaped like template."""
    meta = load_checkpoint_meta(directory)
    with np.load(os.path.join(directory, "state.npz")) as arrays:
        state = _arrays_to_tree(template, arrays)
    return state, meta
