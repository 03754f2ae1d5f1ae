"""The workers of the trial kinds, stated once: trial kind -> `Worker`.

A worker is the science of one trial: ``fn(config, report, **options) -> metrics``, pure (no
Ray, no MLflow). ``config`` is the trial's config; ``report(metrics, checkpoint_dir=None)``
records a point (and a checkpoint directory to keep). The options are what the driver can
hand it besides, each one declared, never guessed from its signature on the trial's path:

- ``should_stop() -> bool``: the worker polls the sweep's stop request itself, writes a
  checkpoint and returns ``status=Status.INTERRUPTED`` (a worker without it is stopped at
  its next report);
- ``map_tiles(fn, kwargs_list) -> results``: a kernel cell maps its independent tiles through
  the driver's mapper (the tile cache, Ray tasks on the cluster's GPUs: orchestrator/tiles.py).

It returns its final metrics with a ``status`` (`workers.vocab.Status`) and raises `UserError`
for bad config or data. `BUILTIN` are the default workers; a sweep file replaces one with
``Sweep(..., workers={"train": fn})`` (a function, whose options `Worker.of` reads from its
parameter names once, when the sweep is made, or a `Worker` stating them).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from workers.errors import ConfigError
from workers.vocab import TRIAL_KINDS


@dataclass(frozen=True)
class Worker:
    """A worker function and the options it takes (module docstring)."""

    fn: Callable[..., dict]
    takes_stop: bool = False  # takes ``should_stop``
    takes_tiles: bool = False  # takes ``map_tiles``

    @classmethod
    def of(cls, fn: Callable[..., dict] | Worker) -> Worker:
        """``fn`` as a Worker: a Worker as it is; a function with the options its parameter
        names declare (``should_stop``, ``map_tiles``). ConfigError for a non-callable."""
        if isinstance(fn, Worker):
            return fn
        if not callable(fn):
            raise ConfigError(f"worker {fn!r} is not a function: give "
                              "workers={'train': fn} with fn(config, report, ...)")
        params = inspect.signature(fn).parameters
        return cls(fn, takes_stop="should_stop" in params, takes_tiles="map_tiles" in params)

    def __call__(self, config: Mapping[str, Any], report: Callable[..., None] | None = None,
                 **options: Any) -> dict:
        """Call ``fn`` with the options it takes among ``options`` (the others dropped)."""
        takes = {"should_stop": self.takes_stop, "map_tiles": self.takes_tiles}
        return self.fn(config, report, **{k: v for k, v in options.items() if takes[k]})


def _train() -> Worker:
    from workers.train import train

    return Worker(train, takes_stop=True)


def _kernel() -> Worker:
    from workers.kernel_trial import run_kernel_trial

    return Worker(run_kernel_trial, takes_tiles=True)


# kind -> the default worker, built on first use (importing JAX and flax only then)
BUILTIN: dict[str, Callable[[], Worker]] = {"train": _train, "kernel": _kernel}


def worker_for(kind: str, overrides: Mapping[str, Worker] | None = None) -> Worker:
    """The worker of trial kind ``kind``: a sweep's override, else the built-in one.
    ConfigError for a kind that is not one of `workers.vocab.TRIAL_KINDS`."""
    if overrides and kind in overrides:
        return overrides[kind]
    if kind not in BUILTIN:
        raise ConfigError(f"trial kind {kind!r}: expected one of {', '.join(TRIAL_KINDS)}")
    return BUILTIN[kind]()


def check_workers(workers: Mapping[str, Callable[..., dict] | Worker] | None
                  ) -> dict[str, Worker] | None:
    """A sweep's ``workers=`` as {kind: Worker}; ConfigError naming an unknown kind."""
    if not workers:
        return None
    bad = [k for k in workers if k not in TRIAL_KINDS]
    if bad:
        raise ConfigError(f"workers={{{bad[0]!r}: ...}}: a worker replaces one of the trial "
                          f"kinds {', '.join(TRIAL_KINDS)}")
    return {k: Worker.of(fn) for k, fn in workers.items()}
