"""Kernel tiles: content keys, the checksummed tile cache, and the mapper that runs them.

A kernel cell (workers/kernel_trial.py) asks the kernel engine for its NNGP/NTK blocks; the
engine cuts them into tiles and calls ``map_tiles`` (`TileMapper`) on them. Each tile is keyed
by its content (`tile_key`: the source of the function's module and of the package modules it
imports, and every argument), so equal tiles of
different cells, attempts and sweeps are computed once and read from `TileCache` afterwards
(docs/performance.md, "tile cache"). Uncached tiles run as Ray tasks when Ray is initialised,
in-process otherwise.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import io
import logging
import marshal
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from orchestrator.cpus import claimed_cores, pin_threads
from orchestrator.fsio import resolve_root, write_atomic
from orchestrator.spec import SWEEP_MODULE_PREFIX
from workers.errors import TrialInterrupted

log = logging.getLogger("symsweep")


# ====================================================================== tile cache
def _array_digest(a: Any) -> str:
    arr = np.ascontiguousarray(np.asarray(a))
    h = hashlib.sha256()
    h.update(str((arr.dtype.str, arr.shape)).encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def _own_imports(name: str, source: bytes, top: str) -> set[str]:
    """The modules of package ``top`` that module ``name`` imports (absolute or relative),
    read from its source: ``from top.x import y`` gives top.x, and top.x.y when that is a
    module too."""
    pkg = name if hasattr(sys.modules.get(name), "__path__") else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == top}
        elif isinstance(node, ast.ImportFrom):
            base = (importlib.util.resolve_name("." * node.level + (node.module or ""), pkg)
                    if node.level else node.module or "")
            if base.split(".")[0] != top:
                continue
            out.add(base)
            for a in node.names:
                sub = f"{base}.{a.name}"
                try:
                    if importlib.util.find_spec(sub) is not None:
                        out.add(sub)
                except (ImportError, ValueError):  # a name in the module, not a module
                    pass
    return out


@functools.cache
def _code_digest(module: str) -> str:
    """sha256 (16 hex) of the source of ``module`` and of every module of its own top-level
    package that it imports, transitively (for the kernel tile: workers/kernels.py and the
    workers modules it uses), by module name and bytes, so equal code in two checkouts gives
    equal keys. Computed once per process: the code that runs is the code imported. Raises
    OSError when a source file cannot be read."""
    top = module.split(".")[0]
    seen: dict[str, bytes] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        # a loaded module by its file (also a sweep file, imported under a private name)
        path = getattr(sys.modules.get(name), "__file__", None)
        if path is None:
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError) as ex:
                raise OSError(f"module {name}: {ex}") from None
            path = spec.origin if spec is not None else None
        if not path or not path.endswith(".py"):
            raise OSError(f"module {name} has no Python source file ({path})")
        with open(path, "rb") as f:
            seen[name] = f.read()
        todo.extend(_own_imports(name, seen[name], top) - set(seen))
    h = hashlib.sha256()
    for name in sorted(seen):
        h.update(f"{name}\0{len(seen[name])}\0".encode())
        h.update(seen[name])
    return h.hexdigest()[:16]


_bytecode_warned: set[str] = set()


def _module_digest(fn: Callable) -> str:
    """What a tile's key knows of the code computing it (`_code_digest` of fn's module):
    tiles computed by other code are not reused. A function whose source cannot be read
    (defined in ``python -c``, a notebook cell, a zip) is keyed by its own bytecode instead,
    which misses changes in what it calls: said once per function, as a warning."""
    try:
        return _code_digest(fn.__module__)
    except (OSError, SyntaxError) as ex:
        code = getattr(fn, "__code__", None)
        if code is None:
            raise TypeError(f"cannot key tiles of {fn!r}: no source and no bytecode") from None
        name = f"{fn.__module__}.{fn.__qualname__}"
        if name not in _bytecode_warned:
            _bytecode_warned.add(name)
            log.warning("tiles of %s are keyed by its bytecode only (%s): a change in the "
                        "code it calls is not seen; clear the tile cache (<results>/tiles) "
                        "after such a change", name, ex)
        return "bytecode:" + hashlib.sha256(marshal.dumps(code)).hexdigest()[:16]


def tile_key(fn: Callable, kwargs: Mapping[str, Any], _memo: dict[int, str] | None = None) -> str:
    """Content hash of one tile: the function (name and source), every argument, arrays by
    their bytes. Equal inputs give equal keys in every process and every sweep."""
    memo = {} if _memo is None else _memo
    h = hashlib.sha256()
    h.update(f"{fn.__module__}.{fn.__qualname__}:{_module_digest(fn)}".encode())
    for k in sorted(kwargs):
        v = kwargs[k]
        if isinstance(v, type):  # e.g. dtype=np.float32: by name (a class has __array__ too)
            h.update(f"|{k}=type:{v.__module__}.{v.__qualname__}".encode())
        elif isinstance(v, np.ndarray) or hasattr(v, "__array__") and hasattr(v, "shape"):
            d = memo.get(id(v))
            if d is None:
                d = memo[id(v)] = _array_digest(v)
            h.update(f"|{k}=array:{d}".encode())
        else:
            h.update(f"|{k}={v!r}".encode())
    return h.hexdigest()[:32]


def _flatten(obj: Any, prefix: str = "") -> dict[str, np.ndarray]:
    if isinstance(obj, Mapping):
        out: dict[str, np.ndarray] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}d:{k}/"))
        return out
    if isinstance(obj, list | tuple):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}{'t' if isinstance(obj, tuple) else 'l'}:{i}/"))
        return out
    return {prefix.rstrip("/") or "a:": np.asarray(obj)}


def _unflatten(flat: Mapping[str, np.ndarray]) -> Any:
    if list(flat) == ["a:"]:
        return flat["a:"]
    root: dict[str, Any] = {}
    for key, arr in flat.items():
        parts = key.split("/")
        node = root
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = arr

    def build(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        kinds = {k.split(":", 1)[0] for k in node}
        items = {k.split(":", 1)[1]: build(v) for k, v in node.items()}
        if kinds == {"d"}:
            return items
        seq = [items[str(i)] for i in range(len(items))]
        return tuple(seq) if kinds == {"t"} else seq

    return build(root)


_TILE_SUM = "__sha256__"  # name of the checksum entry inside a tile's .npz


def _tile_checksum(key: str, flat: Mapping[str, np.ndarray]) -> str:
    """sha256 over the tile's key and every array (name, dtype, shape, bytes): a tile is
    valid only under its own key, so a valid .npz of another tile (or edited numbers) fails."""
    h = hashlib.sha256(f"symsweep-tile:{key}".encode())
    for name in sorted(flat):
        arr = np.ascontiguousarray(flat[name])
        h.update(f"|{name}:{arr.dtype.str}:{arr.shape}|".encode())
        h.update(memoryview(arr).cast("B") if arr.size else b"")
    return h.hexdigest()


class TileCache:
    """Content-addressed tile results under ``<results>/tiles/<key>.npz`` (local or URI).

    Each tile stores a checksum of its arrays bound to its key (`_tile_checksum`), verified on
    read: a truncated, edited or swapped tile (another tile's valid .npz under this name) is
    recomputed, and said so: a warning in this process's log, and ``corrupt`` (count) /
    ``corrupt_notes`` (messages) for the trial to report to the driver (``tiles_corrupt``),
    since a trial's own log does not reach the driver's output.
    """

    def __init__(self, root: str):
        self.fs, base = resolve_root(root)
        self.dir = f"{base}/tiles"
        self.corrupt = 0
        self.corrupt_notes: list[str] = []

    def _bad(self, key: str, why: str) -> None:
        msg = f"kernel tile {self.dir}/{key}.npz {why}; recomputing it"
        log.warning(msg)
        self.corrupt += 1
        if len(self.corrupt_notes) < 5:
            self.corrupt_notes.append(msg)

    def get(self, key: str) -> Any | None:
        """The tile stored under ``key``, or None when absent or failing its checksum."""
        try:
            with self.fs.open_input_file(f"{self.dir}/{key}.npz") as f:
                data = f.read()
        except (FileNotFoundError, OSError):
            return None  # not computed yet
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                flat = {k: z[k] for k in z.files}
        except Exception as ex:  # a truncated tile is recomputed, and said so
            self._bad(key, f"is unreadable ({type(ex).__name__}: {ex})")
            return None
        stored = flat.pop(_TILE_SUM, None)
        if stored is None:
            self._bad(key, "has no checksum")
            return None
        if str(stored) != _tile_checksum(key, flat):
            self._bad(key, "fails its checksum (its content is not this tile's)")
            return None
        return _unflatten(flat)

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` (arrays in nested dicts / lists / tuples) under ``key`` with its
        checksum: temporary name, then rename, so a reader never sees half a tile."""
        flat = _flatten(value)
        buf = io.BytesIO()
        np.savez(buf, **flat, **{_TILE_SUM: np.array(_tile_checksum(key, flat))})
        write_atomic(self.fs, f"{self.dir}/{key}.npz", buf.getvalue())


def ship_by_value(fn: Callable) -> None:
    """A function defined in a sweep file (a worker, or a tile function it maps) lives in a
    module load_sweep imported under a private name that Ray's workers cannot import: make
    cloudpickle send that module by value. Functions of installed modules are left alone."""
    mod = sys.modules.get(getattr(fn, "__module__", "") or "")
    if mod is not None and mod.__name__.startswith(SWEEP_MODULE_PREFIX):
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(mod)


def _run_tile(fn: Callable, names: list[str], where: tuple[str, list[int]] | None,
              *values: Any) -> Any:
    # a CPU tile runs on its trial's cores (``where``: the trial's host and claimed cores,
    # orchestrator.cpus): its CPUs are the trial's bundle, so it must not spread beyond them
    if where is not None and where[0] == socket.gethostname():
        pin_threads(set(where[1]))
    return fn(**dict(zip(names, values, strict=True)))


@dataclass
class TileMapper:
    """``map_tiles(fn, list_of_kwargs) -> list`` for the kernel engine: cached tiles are
    loaded, the others run as Ray tasks (at most ``inflight`` at a time; in-process when Ray
    is not initialised) and each is stored as soon as it finishes, so a crash keeps them.

    ``should_stop`` (stopping.StopProbe): checked before each new tile; once true, the tiles
    in flight are finished and stored, then `TrialInterrupted` is raised (a later attempt
    finds every computed tile in the cache)."""

    cache: TileCache | None
    inflight: int = 1
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    use_ray: bool = True
    should_stop: Callable[[], bool] | None = None
    hits: int = 0
    computed: int = 0
    stats: dict[str, float] = field(default_factory=dict)

    def __call__(self, fn: Callable, kwargs_list: list[Mapping[str, Any]], *,
                 on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        """Results of fn(**kw) for every kw, in order. With ``on_result``, each result is
        passed to ``on_result(i, value)`` as soon as it is loaded or computed (in completion
        order) and not kept: the returned list then holds None, so the caller (the kernel
        engine) holds at most the tiles in flight, not all of them."""
        memo: dict[int, str] = {}
        keys = [tile_key(fn, kw, memo) for kw in kwargs_list]
        out: list[Any] = [None] * len(keys)

        def deliver(i: int, value: Any) -> None:
            if on_result is None:
                out[i] = value
            else:
                on_result(i, value)

        todo = []
        for i, k in enumerate(keys):
            v = self.cache.get(k) if self.cache is not None else None
            if v is None:
                todo.append(i)
            else:
                self.hits += 1
                deliver(i, v)
            del v
        if not todo:
            return out
        ray_ok = False
        if self.use_ray:
            import ray

            ray_ok = ray.is_initialized()
        if not ray_ok:
            for n, i in enumerate(todo):
                if self.should_stop is not None and self.should_stop():
                    raise self._interrupted(len(todo) - n, len(todo))
                v = fn(**kwargs_list[i])
                self._store(keys[i], v)
                deliver(i, v)
                del v
            return out
        import ray

        # CPU-only: the trial's own CPU bundle covers its tiles (num_cpus=0, at most
        # `inflight` at a time), so a trial never waits on CPUs it holds itself. GPU tiles
        # run in the trial's tile bundle (placement-group capture).
        ship_by_value(fn)
        remote = ray.remote(_run_tile).options(
            num_cpus=0 if self.num_gpus == 0 else self.num_cpus, num_gpus=self.num_gpus,
            max_retries=2)
        refs_by_id: dict[int, Any] = {}
        cores = claimed_cores() if self.num_gpus == 0 else None
        where = (socket.gethostname(), cores) if cores else None

        def submit(i: int) -> Any:
            kw = kwargs_list[i]
            names, vals = list(kw), []
            for n in names:
                v = kw[n]
                if isinstance(v, np.ndarray) and v.nbytes > 100_000:
                    if id(v) not in refs_by_id:
                        refs_by_id[id(v)] = ray.put(v)
                    v = refs_by_id[id(v)]
                vals.append(v)
            return remote.remote(fn, names, where, *vals)

        pending: dict[Any, int] = {}
        queue = list(todo)
        left = 0  # tiles not started because a stop was requested
        while queue or pending:
            if queue and self.should_stop is not None and self.should_stop():
                left, queue = len(queue), []  # those in flight are finished and stored below
            while queue and len(pending) < max(1, self.inflight):
                i = queue.pop(0)
                pending[submit(i)] = i
            ready, _ = ray.wait(list(pending), num_returns=1)
            for r in ready:
                i = pending.pop(r)
                v = ray.get(r)
                self._store(keys[i], v)
                deliver(i, v)
                del v
        if left:
            raise self._interrupted(left, len(todo))
        return out

    def _interrupted(self, left: int, total: int) -> TrialInterrupted:
        return TrialInterrupted(f"stopped on a stop request with {left} of {total} uncached "
                                f"kernel tile(s) of a block left; the {self.computed} computed "
                                "are cached for the next attempt")

    def _store(self, key: str, value: Any) -> None:
        self.computed += 1
        if self.cache is not None:
            self.cache.put(key, value)
