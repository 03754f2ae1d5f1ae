"""Sweep specifications and their expansion into trials.

A sweep file (``sweeps/fig2.py``) is plain Python that builds one `Sweep`: the axes
(inference x arch x transform, plus optional extra axes such as ``width``), named `Preset`s
(``smoke``, ``cpu``, ``paper``) and per-trial-kind resources. `Sweep.expand(preset)` turns it
into `Trial`s, each with a stable ``trial_id``: a hash of the trial's *scientific* config only
(never the results root, data paths, resources or the sweep's name), so the same cell has the
same id in every run. That id is what resume and de-duplication key on.

Validation happens here, before anything starts: an unknown arch / transform / inference /
preset, an empty axis or a value of the wrong type raises `ConfigError` naming the field; a value
out of range (a width, depth or size <= 0, ...) raises it naming the trial (`check_ranges`).
`select_trials` is the one ``--only FIELD=V1,V2`` filter (run, dry-run, plan, resume, tests).
Resume loads a sweep only from a file the user trusts (`load_recorded_sweep`): never the file a
results folder names, and only when its sha256 matches the one recorded at run time.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import importlib.util
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from workers.errors import ConfigError
from workers.registry import Worker, check_workers
from workers.theorem41 import equivalence_key
from workers.vocab import (
    ALL_ARCHS,
    CONFIG_TYPES,
    FINITE_INFERENCES,
    INFERENCE_DEFAULTS,
    INFERENCES,
    PRESETS,
    TRAIN_ONLY_KEYS,
    TRANSFORMS,
    TRIAL_KINDS,
    scientific,
    trial_kind,
)

# Allowed ranges of numeric config keys: (low, low inclusive, high, high inclusive); None: no
# bound. Checked for every expanded trial, so a 0 width fails at expansion (before Ray starts)
# naming the trial, instead of failing inside every attempt.
CONFIG_RANGES: dict[str, tuple[float | None, bool, float | None, bool]] = {
    **{k: (1, True, None, False) for k in (
        "train_size", "test_size", "image_size", "depth", "width", "eval_every",
        "checkpoint_every", "batch_size", "eta0_samples", "eta0_inits", "eval_batch_size",
        "tile_side", "tile_memory_bytes", "epochs", "eval_every_epochs",
        "checkpoint_every_epochs", "loader_threads", "num_classes", "patch_size",
        "max_train_steps")},
    # 0: no validation set / no SGD step (eta_0 only) / full train set / keep every checkpoint
    **{k: (0, True, None, False) for k in ("val_size", "max_steps", "train_eval_size",
                                          "keep_checkpoints", "subset", "warmup_epochs",
                                          "weight_decay", "loader_processes")},
    "base_lr": (0.0, False, None, False),
    "w_var": (0.0, False, None, False),
    "b_var": (0.0, True, None, False),
    "lr_factor": (0.0, False, None, False),
    "l2": (0.0, True, None, False),
    "eta0": (0.0, False, None, False),
    "diag_reg": (0.0, True, None, False),
    "momentum": (0.0, True, 1.0, False),
    "diverge_loss": (0.0, False, None, False),
    "path_t": (0.0, True, 1.0, True),
}

AXIS_NAMES = ("inference", "arch", "transform")
# memory: bytes of host RAM a trial requests from Ray (default: workers.memory's estimate)
# tile_inflight: GPU kernel tiles one cell keeps in flight over the cluster (tiles.TileMapper)
RESOURCE_KEYS = {"cpu": float, "gpu": float, "tile_cpu": float, "tile_gpu": float,
                 "tile_inflight": float, "memory": float}



def _check_value(where: str, key: str, value: Any, *, label: str | None = None) -> Any:
    """Type-check one config value; returns it normalised (ints to float for float keys).
    Errors name ``label`` (default ``<where>.<key>``)."""
    if key not in CONFIG_TYPES:
        raise ConfigError(
            f"{where}: unknown config key '{key}'; known keys: {', '.join(sorted(CONFIG_TYPES))}"
        )
    label = label or f"{where}.{key}"
    want = CONFIG_TYPES[key]
    if want is tuple:  # the one tuple key, diag_reg_grid: checked where the worker checks it
        from workers.kernel_trial import check_diag_reg_grid

        try:
            return check_diag_reg_grid(value)
        except ConfigError as ex:
            raise ConfigError(f"{label}: {ex}") from None
    if want is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{label}: expected a number, got {value!r}")
        return float(value)
    if want is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{label}: expected an integer, got {value!r}")
        return int(value)
    if want is bool and not isinstance(value, bool):
        raise ConfigError(f"{label}: expected True or False, got {value!r}")
    if not isinstance(value, want):
        raise ConfigError(f"{label}: expected {want.__name__}, got {value!r}")
    return value


def _check_config(where: str, cfg: Any) -> dict[str, Any]:
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{where}: expected a dict of config values, got {type(cfg).__name__}")
    return {k: _check_value(where, k, v) for k, v in cfg.items()}


def _check_names(where: str, values: Iterable[Any], known: tuple[str, ...], what: str) -> None:
    for v in values:
        if v not in known:
            raise ConfigError(f"{where}: unknown {what} {v!r}; choose from {', '.join(known)}")


def _range_text(lo: float | None, lo_inc: bool, hi: float | None, hi_inc: bool) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>=' if lo_inc else '>'} {lo:g}")
    if hi is not None:
        parts.append(f"{'<=' if hi_inc else '<'} {hi:g}")
    return " and ".join(parts)


def range_error(key: str, value: Any) -> str | None:
    """Why ``value`` is out of `CONFIG_RANGES` for ``key`` (None when it is in range)."""
    if key not in CONFIG_RANGES or value is None or isinstance(value, bool) or \
            not isinstance(value, int | float):
        return None
    lo, lo_inc, hi, hi_inc = CONFIG_RANGES[key]
    # `not (x >= lo)` rather than `x < lo`: a NaN is out of every range
    bad = (lo is not None and not (value >= lo if lo_inc else value > lo)) or \
        (hi is not None and not (value <= hi if hi_inc else value < hi))
    if not bad:
        return None
    return f"{key} must be {_range_text(lo, lo_inc, hi, hi_inc)}, got {value!r}"


def describe_trial(t: Trial) -> str:
    """Short human name of a trial: ``nn/vec/identity seed 0 (id 1a2b...)``."""
    c = t.config
    return (f"{c.get('inference')}/{c.get('arch')}/{c.get('transform')} seed {c.get('seed')} "
            f"(id {t.trial_id})")


def check_ranges(trials: Iterable[Trial], where: str) -> None:
    """Raise `ConfigError` naming the first trial with a config value out of `CONFIG_RANGES`
    (a width, depth or size <= 0, a momentum >= 1, ...). ``where`` names the sweep/preset."""
    for t in trials:
        for k in sorted(t.config):
            why = range_error(k, t.config[k])
            if why:
                raise ConfigError(f"{where}: trial {describe_trial(t)}: {why}; fix the preset "
                                  "config, its width or its rules")
        if t.config.get("diag_reg_grid") is not None and t.config.get("val_size") == 0:
            raise ConfigError(f"{where}: trial {describe_trial(t)}: diag_reg_grid chooses "
                              "diag_reg on the validation split, but val_size is 0; set "
                              "val_size > 0 for the kernel trials (e.g. in the rule that sets "
                              "diag_reg_grid)")


# ---------------------------------------------------------------------- overrides (--set)
def parse_set_value(text: str) -> Any:
    """The value of ``--set KEY=VALUE``: a Python literal (`ast.literal_eval`: ``64``,
    ``1e-3``, ``True``, ``'x'``), else the text itself, so a bare word (``cifar10``) needs no
    quotes. Types are checked afterwards against the key (`check_overrides`)."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text.strip()


def check_overrides(overrides: Mapping[str, Any], where: str = "--set") -> dict[str, Any]:
    """Validate config overrides like a sweep file's config: every key must be a config key
    (`workers.vocab.CONFIG_TYPES`; an axis name such as ``arch`` or ``seed`` is refused with a
    pointer to ``--only``), every value of the key's type and inside `CONFIG_RANGES`. Returns
    them normalised (ints to float for float keys, so ``w_var=2`` and ``w_var=2.0`` hash
    alike); raises `ConfigError`, one line naming ``KEY=VALUE``."""
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{where}: expected KEY=VALUE pairs, got {overrides!r}")
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        item = f"{where} {key}={value!r}"
        if key in (*AXIS_NAMES, "seed", "kind"):
            raise ConfigError(f"{item}: {key} is an axis, not a config key; select its values "
                              f"with --only {key}=V1,V2")
        if key not in CONFIG_TYPES:
            raise ConfigError(f"{item}: unknown config key {key!r}; known keys: "
                              f"{', '.join(sorted(CONFIG_TYPES))}")
        v = _check_value(where, key, value, label=item)
        why = range_error(key, v)
        if why:
            raise ConfigError(f"{item}: {why}")
        out[key] = v
    return out


def parse_overrides(items: Iterable[str] | None) -> dict[str, Any]:
    """``["max_steps=100", "w_var=2"]`` (``--set``, repeatable) -> ``{"max_steps": 100,
    "w_var": 2.0}``, validated by `check_overrides`; a later item for the same key wins.
    Raises `ConfigError` for an item without ``KEY=``."""
    raw: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set max_steps=1000")
        raw[key] = parse_set_value(text)
    return check_overrides(raw)


# ---------------------------------------------------------------------- trial selection
# Fields --only may filter on besides config keys: the trial kind.
SELECT_FIELDS_EXTRA = ("kind",)


def parse_only(items: Iterable[str] | None) -> dict[str, list[str]] | None:
    """``["arch=vec,gap", "inference=ntk"]`` -> ``{"arch": ["vec", "gap"], "inference":
    ["ntk"]}``; None for no items. Raises `ConfigError` for an item without ``=`` or without a
    value. Field names and values are checked against a sweep by `select_trials`."""
    if not items:
        return None
    out: dict[str, list[str]] = {}
    for item in items:
        field_, sep, vals = str(item).partition("=")
        field_ = field_.strip()
        values = [x.strip() for x in vals.split(",") if x.strip()]
        if not sep or not field_ or not values:
            raise ConfigError(f"--only {item!r}: expected FIELD=VALUE[,VALUE...], e.g. "
                              "--only inference=ntk")
        out.setdefault(field_, []).extend(v for v in values if v not in out.get(field_, []))
    return out


def _field_value(t: Trial, key: str) -> str | None:
    if key == "kind":
        return t.kind
    return str(t.config[key]) if key in t.config else None


def _canon(value: str) -> str:
    """A value as --only compares it: numbers by their value (``w_var=2`` matches 2.0),
    booleans case-insensitively, anything else as text."""
    if value.lower() in ("true", "false"):
        return value.lower()
    try:
        return repr(float(value))
    except ValueError:
        return value


def select_trials(trials: list[Trial], only: Mapping[str, Iterable[str]] | None) -> list[Trial]:
    """The trials whose every ``only`` field has one of the given values (compared as text,
    numbers by value: ``seed=0``, ``width=64``, ``w_var=2`` work); all of them when ``only``
    is empty.

    A field must be ``kind`` or a config key some trial has (inference, arch, transform, seed,
    width, train_size, ...), and every value must occur for that field in ``trials``: a typo
    raises `ConfigError` naming the valid fields or values instead of selecting nothing. An
    empty result (values that never occur together) is an error too. A derived kernel cell
    whose source is not selected is computed itself (its ``derived_from`` is cleared).
    """
    if not only:
        return list(trials)
    if not trials:
        raise ConfigError("--only: the sweep has no trials to select from")
    fields = sorted({k for t in trials for k in t.config} | set(SELECT_FIELDS_EXTRA))
    for key, values in only.items():
        if key not in fields:
            raise ConfigError(f"--only {key}=...: unknown field {key!r}; choose from "
                              f"{', '.join(fields)}")
        seen = sorted({v for t in trials if (v := _field_value(t, key)) is not None})
        bad = [v for v in values if _canon(str(v)) not in {_canon(x) for x in seen}]
        if bad:
            raise ConfigError(f"--only {key}={','.join(map(str, values))}: no trial has {key} "
                              f"{bad[0]!r}; valid values: {', '.join(seen)}")
    want = {k: {_canon(str(v)) for v in vs} for k, vs in only.items()}
    out = [t for t in trials
           if all(_canon(str(_field_value(t, k))) in vs for k, vs in want.items())]
    if not out:
        given = " ".join(f"{k}={','.join(map(str, v))}" for k, v in only.items())
        raise ConfigError(f"--only {given}: no trial has all of these values together; "
                          "drop one filter or check `symsweep run <sweep> --dry-run`")
    return undo_orphan_derivations(out)


def undo_orphan_derivations(selected: list[Trial]) -> list[Trial]:
    """``selected`` with ``derived_from`` cleared wherever the source trial is not selected
    too: such a cell cannot be copied, it is computed itself."""
    keep = {t.trial_id for t in selected}
    return [t if (t.derived_from is None or t.derived_from in keep) else
            Trial(t.trial_id, t.kind, t.config, t.resources, None) for t in selected]


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
      kernels tile_cpu / tile_gpu per tile task and tile_inflight, the GPU tiles one cell
      keeps in flight anywhere in the cluster (default 1).
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
    sci = scientific(dict(config))
    blob = json.dumps(sci, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def kernel_equivalence_key(arch: str, transform: str) -> tuple[str, str]:
    """Canonical (arch, transform) of a kernel cell: Theorem 4.1's table at infinite width
    (`workers.theorem41.equivalence_key`), where lcn_inf = vec_inf."""
    return equivalence_key(arch, transform, infinite=True)


@dataclass
class Sweep:
    """A sweep: axes x presets x resources. See the module docstring and sweeps/fig2.py."""

    name: str
    axes: Mapping[str, list[Any]]
    presets: Mapping[str, Preset]
    description: str = ""
    # kind -> the worker replacing the built-in one (workers.registry; a function or a Worker)
    workers: Mapping[str, Worker] | None = None
    source: str | None = None
    # config set on every trial after the preset and its rules (`--set KEY=VALUE`)
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workers = check_workers(self.workers)
        self.validate()

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> Sweep:
        """A copy of this sweep whose every trial has ``overrides`` (validated by
        `check_overrides`) set on top of its preset config and rules, so they are part of each
        trial's config and, for scientific keys, of its ``trial_id``. A key that is an axis of
        this sweep (e.g. ``width`` in fig3) is refused: ``--only`` selects axis values."""
        ov = check_overrides(overrides or {})
        for key in ov:
            if key in self.axes:
                raise ConfigError(f"--set {key}=...: {key} is an axis of sweep '{self.name}' "
                                  f"(values {list(self.axes[key])}); select values with "
                                  f"--only {key}=V")
        new = copy.copy(self)
        new.overrides = {**dict(self.overrides), **ov}
        return new

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
                _check_names(where, vals, ALL_ARCHS, "arch")
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
        _check_names(f"{where}.width", p.width.keys(), ALL_ARCHS, "arch")
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
                if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < math.inf:
                    raise ConfigError(f"{where}.resources.{kind}.{k}: expected a finite "
                                      "number >= 0")
                if k == "tile_inflight" and (v < 1 or v != int(v)):
                    raise ConfigError(f"{where}.resources.{kind}.tile_inflight: expected a whole "
                                      f"number >= 1 (kernel tiles in flight per cell), got {v!r}")
            if float(res.get("tile_gpu", 0)) > 0 and float(res.get("tile_cpu", 0)) > 0:
                raise ConfigError(
                    f"{where}.resources.{kind}: tile_cpu must be 0 when tile_gpu > 0 (GPU tiles "
                    "run outside the trial's bundle, which holds its CPU: tiles that also ask "
                    "for CPUs can wait for ever once the kernel cells hold every CPU); set "
                    "tile_cpu=0")
        if isinstance(p.max_failures, bool) or not isinstance(p.max_failures, int) or \
                p.max_failures < 0:
            raise ConfigError(f"{where}.max_failures: expected an integer >= 0 (retries per "
                              f"trial), got {p.max_failures!r}")
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
            kind = trial_kind(inference)
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
                    cfg.update(self.overrides)  # --set: last, over preset and rules
                    if kind == "kernel":
                        for k in TRAIN_ONLY_KEYS:  # they do not change a kernel
                            cfg.pop(k, None)
                    else:
                        # nor this a finite net (so `--set diag_reg_grid=...` keeps the
                        # finite trials' ids; other kernel-only keys stay, as they always did)
                        cfg.pop("diag_reg_grid", None)
                    if kind == "train" and "width" not in cfg:
                        raise ConfigError(f"sweep.presets.{preset}.width: no width for {arch}")
                    cfg.update(inference=inference, arch=arch, transform=transform,
                               seed=int(seed), transform_seed=int(cfg.get("transform_seed",
                                                                         seed)))
                    res = {"cpu": 1.0, "gpu": 0.0, "tile_cpu": 1.0, "tile_gpu": 0.0}
                    res.update({k: float(v) for k, v in p.resources.get(kind, {}).items()})
                    if res["tile_gpu"] > 0:  # GPU tiles reserve no CPU (validate: deadlock)
                        res["tile_cpu"] = 0.0
                    trials.append(Trial(trial_id_of(cfg), kind, cfg, res))
        check_ranges(trials, f"sweep '{self.name}' preset {preset}")
        ids = [t.trial_id for t in trials]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"sweep '{self.name}' preset {preset}: two trials have the same "
                              "scientific config; remove the duplicate axis values")
        return dedupe_trials(trials) if dedupe else trials


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



class CompositeSweep(Sweep):
    """One sweep (name, results store, presets) made of parts with different axes.

    ``parts``: `Sweep`s with the same preset names; `expand` returns the union of their trials
    (de-duplication of equal kernel cells happens within each part). Preset-level settings the
    runner reads (success_train_acc, max_failures) come from the first part. ``preset_axes``:
    per preset, axis values that replace a part's (e.g. a smaller width grid for ``smoke``),
    applied to every part that has the axis. ``analysis``: defaults for the figure (e.g.
    ``{"fit_first": 3, "fit_last": 3}``).
    """

    def __init__(self, name: str, parts: Sequence[Sweep], *, description: str = "",
                 workers: Mapping[str, Callable[..., dict]] | None = None,
                 analysis: Mapping[str, Any] | None = None,
                 preset_axes: Mapping[str, Mapping[str, list[Any]]] | None = None) -> None:
        if not parts:
            raise ConfigError(f"sweep '{name}': a CompositeSweep needs at least one part")
        names = [set(p.presets) for p in parts]
        if any(n != names[0] for n in names):
            raise ConfigError(f"sweep '{name}': every part needs the same presets, got "
                              f"{[sorted(n) for n in names]}")
        self.parts = list(parts)
        self.analysis = dict(analysis or {})
        self.preset_axes = {k: dict(v) for k, v in (preset_axes or {}).items()}
        for pname in self.preset_axes:
            for p in self.parts:
                self._part_for(p, pname)  # validates the overriding axis values
        axes: dict[str, list[Any]] = {}
        for p in parts:
            for k, vals in p.axes.items():
                cur = axes.setdefault(k, [])
                cur.extend(v for v in vals if v not in cur)
        super().__init__(name=name, axes=axes, presets=parts[0].presets,
                         description=description, workers=workers)

    def validate(self) -> None:
        for p in getattr(self, "parts", []):
            p.validate()

    def _part_for(self, part: Sweep, preset: str) -> Sweep:
        over = {k: v for k, v in self.preset_axes.get(preset, {}).items() if k in part.axes}
        if not over:
            return part
        return Sweep(name=part.name, axes={**part.axes, **over}, presets=part.presets,
                     description=part.description, workers=part.workers)

    def expand(self, preset: str, *, dedupe: bool = True) -> list[Trial]:
        self.preset(preset)
        trials = [t for p in self.parts
                  for t in self._part_for(p, preset).with_overrides(self.overrides)
                  .expand(preset, dedupe=dedupe)]
        ids = [t.trial_id for t in trials]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"sweep '{self.name}' preset {preset}: two parts produce the same "
                              "trial; make the parts disjoint")
        return trials


# Sweep files are imported under this prefix (the runner ships their workers by value).
SWEEP_MODULE_PREFIX = "_symsweep_sweep_"


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
    modname = f"{SWEEP_MODULE_PREFIX}{p.stem}_{hashlib.sha1(str(p).encode()).hexdigest()[:8]}"
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
    return sw


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (the sweep file's, recorded in the manifest at run time)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# The repository's sweep files: resume and the figure tables load sweeps from here by name.
SWEEPS_DIR = Path(__file__).resolve().parents[1] / "sweeps"


def load_recorded_sweep(name: str, manifest: Mapping[str, Any], sweep_file: str | None = None,
                        *, force: bool = False) -> Sweep:
    """The sweep of a results folder's manifest, loaded from a file the *user* trusts: the
    repository's ``sweeps/<name>.py`` or ``sweep_file``, never the ``source`` the manifest
    names (a results folder is data, never code: a shared folder could point it anywhere).

    The file's sha256 must equal the manifest's ``source_sha256`` (recorded by `run`), so a
    resume continues the sweep that was started; ``force`` accepts a different or unrecorded
    hash. Raises `ConfigError` (naming both hashes) otherwise, or when the file is missing or
    defines another sweep.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"sweep name {name!r}: expected an identifier like 'fig2'")
    path = Path(sweep_file) if sweep_file else SWEEPS_DIR / f"{name}.py"
    if not path.is_file():
        raise ConfigError(f"sweep file {str(path)!r} not found; pass the sweep file that "
                          f"started '{name}' with --sweep-file PATH")
    have = file_sha256(path)
    want = manifest.get("source_sha256")
    if have != want and not force:
        if not want:
            raise ConfigError(f"the manifest of '{name}' records no sweep-file hash (written by "
                              f"an older symsweep), so {path} (sha256 {have}) cannot be "
                              "checked; pass --force to use it anyway")
        raise ConfigError(f"{path} has sha256 {have} but '{name}' was run from a file with "
                          f"sha256 {want}; pass the original with --sweep-file PATH, or "
                          "--force to continue with this one")
    sw = load_sweep(path)
    if sw.name != name:
        raise ConfigError(f"{path} defines sweep '{sw.name}', not '{name}'; pass the right "
                          "--sweep-file")
    return sw


def count_kernel_computations(trials: list[Trial]) -> tuple[int, int]:
    """(kernel cells, kernel computations after de-duplication)."""
    k = [t for t in trials if t.kind == "kernel"]
    return len(k), sum(1 for t in k if t.derived_from is None)
