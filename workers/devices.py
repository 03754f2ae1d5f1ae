"""The devices JAX computes on, and the check that a trial granted GPUs really has them.

On a cluster a node can advertise GPUs to Ray while JAX in its containers sees none (the
NVIDIA runtime missing from the container, a driver still installing, CUDA libraries that
do not match): JAX then falls back to the CPU without a word, and a paper trial runs for days
at a hundredth of its speed on a GPU node. `check_gpus` turns that into an error at the start
of the trial (and of every GPU kernel tile); every row records what it ran on
(`device_info`: the ``backend``, ``device_kind`` and ``device_count`` columns).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from workers.errors import DeviceError

log = logging.getLogger("symsweep")
# Rehearsals on machines without GPUs (tests, a laptop standing in for a cluster): with this
# set to 1, a GPU grant on JAX's CPU backend is allowed, with a warning, instead of an error.
CPU_REHEARSAL = "SYMSWEEP_GPU_REHEARSAL_ON_CPU"


def device_info() -> dict[str, Any]:
    """{"backend": "cpu" | "gpu" | "tpu" | ..., "device_kind": e.g. "NVIDIA H100 80GB HBM3"
    or "cpu", "device_count": local devices of that backend} of this process's JAX."""
    import jax

    devs = jax.local_devices()
    return {"backend": jax.default_backend(), "device_kind": str(devs[0].device_kind),
            "device_count": len(devs)}


def check_gpus(requested: float) -> dict[str, Any]:
    """`device_info`, after checking it against ``requested`` GPUs (Ray's grant: a fraction
    for a shared GPU, else a whole count). Raises DeviceError when JAX's backend is not a GPU
    one, or when it sees fewer GPUs than a whole-GPU request; returns the info otherwise (for
    ``requested`` 0 without any check). `CPU_REHEARSAL` set to 1 allows the CPU backend."""
    info = device_info()
    if requested <= 0:
        return info
    if os.environ.get(CPU_REHEARSAL) == "1" and info["backend"] == "cpu":
        log.warning("%s=1: a trial granted %g GPU(s) runs on JAX's CPU backend (a rehearsal "
                    "on a machine without GPUs; its row records backend cpu)", CPU_REHEARSAL,
                    requested)
        return info
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else \
        "CUDA_VISIBLE_DEVICES unset"
    if info["backend"] not in ("gpu", "cuda", "rocm"):
        raise DeviceError(
            f"granted {requested:g} GPU(s) but JAX runs on {info['backend']} ({where}): jax "
            "has no GPU on this node (the container lacks the NVIDIA runtime, the driver is "
            "still installing, or a CPU-only jaxlib is installed; `python -c 'import jax; "
            "print(jax.devices())'` on the node shows which); nothing ran on the CPU instead")
    whole = int(requested) if float(requested).is_integer() else 1
    if info["device_count"] < whole:
        raise DeviceError(
            f"granted {requested:g} GPU(s) but JAX sees {info['device_count']} "
            f"{info['device_kind']} ({where}): the node's GPUs are not all visible to jax")
    return info


def describe(info: dict[str, Any]) -> str:
    """"gpu NVIDIA H100 80GB HBM3 x1": one line for logs and per-node counts."""
    return f"{info['backend']} {info['device_kind']} x{info['device_count']}"
