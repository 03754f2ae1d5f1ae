"""Sweep specifications and their expansion into trials.

A sweep file (``sweeps/fig2.py``) is plain Python that builds one `Sweep`: the axes
(inference x arch x transform, plus optional extra axes such as ``width``), named `Preset`s
(``smoke``, ``cpu``, ``paper``) and per-trial-kind resources. `Sweep.expand(preset)` turns it
into `Trial`s, each with a stable ``trial_id``: a hash of the trial's *scientific* config only
(never the results root, data paths, resources or the sweep's name), so the same cell has the
same id in every run. That id is what resume and de-duplication key on.

Validation happens here, before anything starts: an unknown arch / transform / inference /
preset, an empty axis or a value of the wrong type raises `ConfigError` naming the field.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from workers.errors import ConfigError

ARCHS = ("fcn", "lcn", "vec", "gap", "lap4", "lap8")
INFERENCES = ("ntk", "nngp", "nn", "nn_plus")
TRANSFORMS = ("identity", "shared_rotation", "pixel_rotation", "permutation", "global_rotation")
PRESETS = ("smoke", "cpu", "paper")
KERNEL_INFERENCES = ("ntk", "nngp")
FINITE_INFERENCES = ("nn", "nn_plus")

# Known config keys and their types. Float keys accept ints (normalised to float, so that
# ``w_var=2`` and ``w_var=2.0`` hash alike). Unknown keys are refused: a typo in a sweep file
# must not silently become a default.
CONFIG_TYPES: dict[str, type] = {
    "dataset": str,
    "data_dir": str,
    "cache_dir": str,
    "train_size": int,
    "val_size": int,
    "test_size": int,
    "image_size": int,
    "flip": bool,
    "subset_seed": int,
    "synthetic_seed": int,
    "transform_seed": int,
    "depth": int,
    "w_var": float,
    "b_var": float,
    "width": int,
    "max_steps": int,
    "eval_every": int,
    "checkpoint_every": int,
    "batch_size": int,
    "lr_factor": float,
    "l2": float,
    "eta0": float,
    "eta0_samples": int,
    "diag_reg": float,
    "tile_memory_bytes": int,
    "kernel_dtype": str,
    "first_layer_init": str,
    "momentum": float,
    "eta0_inits": int,
    "eta0_seed": int,
    "train_eval_size": int,
    "eval_batch_size": int,
    "diverge_loss": float,
    "early_stop_train_acc": float,
    "path_t": float,
    "keep_checkpoints": int,
    "tile_side": int,
    "store_predictions": bool,
}
# Keys that say *where* things are, not *what* is computed: excluded from trial_id.
# tile_side: kernel tile side (fixed across m so nested subsets share tiles; figure sweeps);
# store_predictions: also save the test predictions as an artifact (runner.py).
RUNTIME_KEYS = frozenset({"data_dir", "cache_dir", "tile_memory_bytes", "keep_checkpoints",
                          "eval_batch_size", "tile_side", "store_predictions"})
AXIS_NAMES = ("inference", "arch", "transform")
# memory: bytes of host RAM a trial requests from Ray (default: workers.memory's estimate)
RESOURCE_KEYS = {"cpu": float, "gpu": float, "tile_cpu": float, "tile_gpu": float,
                 "memory": float}
TRIAL_KINDS = ("train", "kernel")

# NN+ is "+LR+L2": 8x the base learning rate and L2 1e-7 (PAPER_SETUP.md).
INFERENCE_DEFAULTS = {
    "nn": {"lr_factor": 1.0, "l2": 0.0},
    "nn_plus": {"lr_factor": 8.0, "l2": 1e-7},
}


def _check_value(where: str, key: str, value: Any) -> Any:
    """Type-check one config value; returns it normalised (ints to float for float keys)."""
    if key not in CONFIG_TYPES:
        raise ConfigError(
            f"{where}: unknown config key '{key}'; known keys: {', '.join(sorted(CONFIG_TYPES))}"
        )
    want = CONFIG_TYPES[key]
    if want is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
        return float(value)
    if want is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}.{key}: expected an integer, got {value!r}")
        return int(value)
    if not isinstance(value, want):
        raise ConfigError(f"{where}.{key}: expected {want.__name__}, got {value!r}")
    return value


def _check_config(where: str, cfg: Any) -> dict[str, Any]:
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{where}: expected a dict of config values, got {type(cfg).__name__}")
    return {k: _check_value(where, k, v) for k, v in cfg.items()}


def _check_names(where: str, values: Iterable[Any], known: tuple[str, ...], what: str) -> None:
    for v in values:
        if v not in known:
            raise ConfigError(f"{where}: unknown {what} {v!r}; choose from {', '.join(known)}")


@dataclass(frozen=True)
class Rule:
    """Config overrides for the trials whose axis values match ``when``.

    ``when`` maps a field (inference, arch, transform, kind, or any config key) to a value or a
    list of values; ``set`` is applied on top of the preset config, in rule order.
    """

    when: Mapping[str, Any]
    set: Mapping[str, Any]

    def matches(self, fields: Mapping[str, Any]) -> bool:
        for k, v in self.when.items():
            allowed = v if isinstance(v, list | tuple | set | frozenset) else [v]
            if fields.get(k) not in allowed:
                return False
        return True


@dataclass(frozen=True)
class Preset:
    """One named scale of a sweep.

    config: base config for every trial (data, depth, steps, ...).
    width: finite width per arch (an axis named ``width`` overrides it).
    seeds: seeds of finite-width runs (init and transform seed); kernel_seeds: of kernel runs.
    rules: `Rule`s (or ``(when, set)`` pairs) applied in order.
    resources: per trial kind ('train', 'kernel'): cpu, gpu (fractions allowed), and for
      kernels tile_cpu / tile_gpu per tile task.
    success_train_acc: a finite run counts in tables when its train accuracy reaches this.
    """

    config: Mapping[str, Any]
    width: Mapping[str, int] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    kernel_seeds: tuple[int, ...] = (0,)
    rules: tuple[Any, ...] = ()
    resources: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    success_train_acc: float = 0.95
    max_failures: int = 2
    description: str = ""


@dataclass(frozen=True)
class Trial:
    """One unit of work: a kind ('train' | 'kernel'), its scientific config and resources.

    ``derived_from`` is set when Theorem 4.1 makes this cell equal to another trial's
    (its ``trial_id``); such a trial is not computed, its row is copied from the source.
    """

    trial_id: str
    kind: str
    config: dict[str, Any]
    resources: dict[str, float]
    derived_from: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial_id": self.trial_id,
            "kind": self.kind,
            "config": dict(self.config),
            "resources": dict(self.resources),
            "derived_from": self.derived_from,
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Trial:
        return Trial(d["trial_id"], d["kind"], dict(d["config"]), dict(d["resources"]),
                     d.get("derived_from"))


def trial_id_of(config: Mapping[str, Any]) -> str:
    """Stable 16-hex-digit id of a trial: sha256 of its scientific config (sorted JSON)."""
    sci = {k: v for k, v in config.items() if k not in RUNTIME_KEYS}
    blob = json.dumps(sci, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def kernel_equivalence_key(arch: str, transform: str) -> tuple[str, str]:
    """Canonical (arch, transform) of a kernel cell under Theorem 4.1 and LCN_inf = VEC_inf.

    fcn kernels are O(3d)-invariant (all five transforms equal); lcn/vec kernels are
    O(3)^d-invariant (identity = shared = pixel rotation) and lcn_inf = vec_inf; gap/lap kernels
    are invariant only under O(3) (x) I_d (identity = shared rotation).
    """
    if arch == "fcn":
        return "fcn", "identity"
    if arch in ("lcn", "vec"):
        t = "identity" if transform in ("shared_rotation", "pixel_rotation") else transform
        return "vec", t
    t = "identity" if transform == "shared_rotation" else transform
    return arch, t


@dataclass
class Sweep:
    """A sweep: axes x presets x resources. See the module docstring and sweeps/fig2.py."""

    name: str
    axes: Mapping[str, list[Any]]
    presets: Mapping[str, Preset]
    description: str = ""
    workers: Mapping[str, Callable[..., dict]] | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise `ConfigError` naming the first malformed field."""
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigError(f"sweep.name: expected an identifier like 'fig2', got {self.name!r}")
        if not isinstance(self.axes, Mapping):
            raise ConfigError("sweep.axes: expected a dict of axis name -> list of values")
        for ax in AXIS_NAMES:
            if ax not in self.axes:
                raise ConfigError(f"sweep.axes.{ax}: missing; every sweep needs {AXIS_NAMES}")
        for ax, vals in self.axes.items():
            where = f"sweep.axes.{ax}"
            if not isinstance(vals, list | tuple):
                raise ConfigError(f"{where}: expected a list, got {type(vals).__name__}")
            if len(vals) == 0:
                raise ConfigError(f"{where}: empty axis; give at least one value")
            if len(set(map(repr, vals))) != len(vals):
                raise ConfigError(f"{where}: duplicate values in {list(vals)}")
            if ax == "arch":
                _check_names(where, vals, ARCHS, "arch")
            elif ax == "inference":
                _check_names(where, vals, INFERENCES, "inference")
            elif ax == "transform":
                _check_names(where, vals, TRANSFORMS, "transform")
            else:
                for v in vals:
                    _check_value("sweep.axes", ax, v)
        if not isinstance(self.presets, Mapping) or not self.presets:
            raise ConfigError("sweep.presets: expected a non-empty dict of name -> Preset")
        for pname, p in self.presets.items():
            self._validate_preset(pname, p)

    def _validate_preset(self, pname: str, p: Any) -> None:
        where = f"sweep.presets.{pname}"
        if pname not in PRESETS:
            raise ConfigError(f"{where}: unknown preset name; choose from {', '.join(PRESETS)}")
        if not isinstance(p, Preset):
            raise ConfigError(f"{where}: expected orchestrator.spec.Preset, got {type(p).__name__}")
        _check_config(f"{where}.config", p.config)
        if not isinstance(p.width, Mapping):
            raise ConfigError(f"{where}.width: expected a dict arch -> int")
        _check_names(f"{where}.width", p.width.keys(), ARCHS, "arch")
        for a, w in p.width.items():
            if isinstance(w, bool) or not isinstance(w, int) or w <= 0:
                raise ConfigError(f"{where}.width.{a}: expected a positive integer, got {w!r}")
        finite = [i for i in self.axes["inference"] if i in FINITE_INFERENCES]
        if finite and "width" not in self.axes:
            missing = [a for a in self.axes["arch"] if a not in p.width]
            if missing:
                raise ConfigError(f"{where}.width: no width for arch {', '.join(missing)}")
        for sk in ("seeds", "kernel_seeds"):
            seeds = getattr(p, sk)
            if not isinstance(seeds, list | tuple) or not seeds:
                raise ConfigError(f"{where}.{sk}: expected a non-empty list of integers")
            for s in seeds:
                if isinstance(s, bool) or not isinstance(s, int):
                    raise ConfigError(f"{where}.{sk}: expected integers, got {s!r}")
        for i, r in enumerate(p.rules):
            rule = r if isinstance(r, Rule) else None
            if rule is None:
                if not (isinstance(r, list | tuple) and len(r) == 2):
                    raise ConfigError(f"{where}.rules[{i}]: expected Rule(when, set) or a pair")
                rule = Rule(r[0], r[1])
            if not isinstance(rule.when, Mapping):
                raise ConfigError(f"{where}.rules[{i}].when: expected a dict")
            for k in rule.when:
                if k not in (*AXIS_NAMES, "kind") and k not in CONFIG_TYPES:
                    raise ConfigError(f"{where}.rules[{i}].when: unknown field '{k}'")
            _check_config(f"{where}.rules[{i}].set", rule.set)
        if not isinstance(p.resources, Mapping):
            raise ConfigError(f"{where}.resources: expected a dict kind -> resources")
        for kind, res in p.resources.items():
            if kind not in TRIAL_KINDS:
                raise ConfigError(f"{where}.resources: unknown trial kind '{kind}'; use "
                                  f"{', '.join(TRIAL_KINDS)}")
            if not isinstance(res, Mapping):
                raise ConfigError(f"{where}.resources.{kind}: expected a dict")
            for k, v in res.items():
                if k not in RESOURCE_KEYS:
                    raise ConfigError(f"{where}.resources.{kind}: unknown resource '{k}'; "
                                      f"use {', '.join(RESOURCE_KEYS)}")
                if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                    raise ConfigError(f"{where}.resources.{kind}.{k}: expected a number >= 0")
        if isinstance(p.max_failures, bool) or not isinstance(p.max_failures, int):
            raise ConfigError(f"{where}.max_failures: expected an integer")
        if not isinstance(p.success_train_acc, int | float):
            raise ConfigError(f"{where}.success_train_acc: expected a number")

    def preset(self, name: str) -> Preset:
        if name not in self.presets:
            raise ConfigError(f"--preset: sweep '{self.name}' has no preset {name!r}; "
                              f"choose from {', '.join(self.presets)}")
        return self.presets[name]

    # ----------------------------------------------------------------- expansion
    def expand(self, preset: str, *, dedupe: bool = True) -> list[Trial]:
        """All trials of ``preset``: kernel cells (one per kernel seed) and finite runs (one per
        seed). With ``dedupe``, kernel cells made equal by Theorem 4.1 share one computation:
        every member but the first of a group gets ``derived_from`` = the first's trial_id."""
        p = self.preset(preset)
        rules = [r if isinstance(r, Rule) else Rule(r[0], r[1]) for r in p.rules]
        extra_axes = [a for a in self.axes if a not in AXIS_NAMES]
        trials: list[Trial] = []
        for inference, arch, transform in product(
            self.axes["inference"], self.axes["arch"], self.axes["transform"]
        ):
            kind = "kernel" if inference in KERNEL_INFERENCES else "train"
            seeds = p.kernel_seeds if kind == "kernel" else p.seeds
            extra_vals = product(*[self.axes[a] for a in extra_axes])
            for extra in extra_vals:
                for seed in seeds:
                    cfg: dict[str, Any] = dict(_check_config("preset.config", p.config))
                    if kind == "train":
                        cfg.update(INFERENCE_DEFAULTS[inference])
                        if arch in p.width:
                            cfg["width"] = int(p.width[arch])
                    cfg.update(dict(zip(extra_axes, extra, strict=True)))
                    fields = {"inference": inference, "arch": arch, "transform": transform,
                              "kind": kind, **cfg}
                    for rule in rules:
                        if rule.matches(fields):
                            cfg.update(_check_config("rule.set", rule.set))
                            fields.update(cfg)
                    if kind == "kernel":
                        for k in ("width", "max_steps", "eval_every", "checkpoint_every",
                                  "batch_size", "lr_factor", "l2", "eta0", "eta0_samples",
                                  "first_layer_init", "momentum", "eta0_inits", "eta0_seed",
                                  "train_eval_size", "eval_batch_size", "diverge_loss",
                                  "early_stop_train_acc", "keep_checkpoints"):
                            cfg.pop(k, None)
                    elif "width" not in cfg:
                        raise ConfigError(f"sweep.presets.{preset}.width: no width for {arch}")
                    cfg.update(inference=inference, arch=arch, transform=transform,
                               seed=int(seed), transform_seed=int(cfg.get("transform_seed",
                                                                         seed)))
                    res = {"cpu": 1.0, "gpu": 0.0, "tile_cpu": 1.0, "tile_gpu": 0.0}
                    res.update({k: float(v) for k, v in p.resources.get(kind, {}).items()})
                    trials.append(Trial(trial_id_of(cfg), kind, cfg, res))
        ids = [t.trial_id for t in trials]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"sweep '{self.name}' preset {preset}: two trials have the same "
                              "scientific config; remove the duplicate axis values")
        return dedupe_trials(trials) if dedupe else trials

    def main(self, argv: list[str] | None = None) -> int:
        """Run this sweep file as a script: same as ``symsweep run <file> ...``."""
        from orchestrator.cli import main as cli_main

        args = list(sys.argv[1:] if argv is None else argv)
        if args and args[0] == "--":
            args = args[1:]
        source = self.source or getattr(sys.modules.get("__main__"), "__file__", None)
        if source is None:
            raise ConfigError(f"sweep '{self.name}': cannot tell which file defines it; run "
                              "`symsweep run <file>`")
        return cli_main(["run", str(source), *args])


def dedupe_trials(trials: list[Trial]) -> list[Trial]:
    """Mark kernel cells that Theorem 4.1 makes identical: the first of each group computes,
    the others get ``derived_from``. Groups share everything but (arch, transform), which must
    map to the same `kernel_equivalence_key`."""
    first: dict[str, str] = {}
    out: list[Trial] = []
    for t in trials:
        if t.kind != "kernel":
            out.append(t)
            continue
        canon = dict(t.config)
        canon["arch"], canon["transform"] = kernel_equivalence_key(t.config["arch"],
                                                                   t.config["transform"])
        key = trial_id_of(canon)
        if key in first:
            out.append(Trial(t.trial_id, t.kind, t.config, t.resources, first[key]))
        else:
            first[key] = t.trial_id
            out.append(t)
    return out


def load_sweep(path: str | Path) -> Sweep:
    """Import a sweep file and return its `Sweep` (the module-level ``SWEEP`` or ``sweep``)."""
    p = Path(path)
    if not p.exists():
        # a bare name ("fig2") or a file copied elsewhere ("~/fig2.py", as `ray submit` does)
        cand = Path("sweeps") / (p.name if p.suffix == ".py" else f"{p.name}.py")
        if cand.exists():
            p = cand
        else:
            raise ConfigError(f"sweep file {str(path)!r} not found; give a path like "
                              "sweeps/fig2.py")
    p = p.resolve()
    modname = f"_symsweep_sweep_{p.stem}_{hashlib.sha1(str(p).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(modname, p)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import sweep file {p}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    try:
        spec.loader.exec_module(mod)
    except ConfigError:
        raise
    except Exception as ex:
        raise ConfigError(f"sweep file {p} failed to import: {type(ex).__name__}: {ex}") from ex
    sw = getattr(mod, "SWEEP", None) or getattr(mod, "sweep", None)
    if not isinstance(sw, Sweep):
        raise ConfigError(f"sweep file {p}: define a module-level SWEEP = orchestrator.spec.Sweep("
                          "...)")
    sw.source = str(p)
    try:  # workers defined in the sweep file must travel to Ray workers by value
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(mod)
    except Exception:  # pragma: no cover - ray always ships its cloudpickle
        pass
    return sw


def count_kernel_computations(trials: list[Trial]) -> tuple[int, int]:
    """(kernel cells, kernel computations after de-duplication)."""
    k = [t for t in trials if t.kind == "kernel"]
    return len(k), sum(1 for t in k if t.derived_from is None)
