"""Kernel tiles' identity and storage: content keys (`tile_key`) and the checksummed,
content-addressed `TileCache` under ``<results>/tiles``.

A tile's key is a hash of the code that computes it (`_code_digest`: the source of the tile
function's module and of every module of its package that it imports) and of every argument
(arrays by their bytes), so equal tiles of different cells, attempts and sweeps share one
entry, and tiles computed by other code are never served (docs/performance.md, "tile cache").
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import io
import logging
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from orchestrator.fsio import write_atomic
from orchestrator.layout import ResultsLayout
from orchestrator.spec import SWEEP_MODULE_PREFIX

log = logging.getLogger("symsweep")


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
    which misses changes in what it calls: said once per function, as a warning. A function of
    a sweep file (shipped to the trials by value) is always keyed by its bytecode."""
    if str(fn.__module__).startswith(SWEEP_MODULE_PREFIX):
        # a sweep file's function, shipped to the trials by value: some processes have its
        # module, others not, and all must give one key
        return _bytecode_digest(fn)
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
        return _bytecode_digest(fn)


def _code_fingerprint(code: types.CodeType) -> bytes:
    """A digest of what a code object does: its bytecode, names and constants, nested code
    objects (inner functions) recursively. Not `marshal.dumps`, whose bytes for equal code
    depend on reference counts (its reference flags): two unpickled copies of one function
    in one process gave different keys."""
    h = hashlib.sha256(code.co_code)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            h.update(_code_fingerprint(c))
        elif isinstance(c, frozenset):  # its order follows string hashing, per process
            h.update(repr(sorted(map(repr, c))).encode())
        else:
            h.update(repr(c).encode())
    h.update(repr((code.co_name, code.co_names, code.co_varnames, code.co_freevars,
                   code.co_cellvars, code.co_argcount, code.co_kwonlyargcount)).encode())
    return h.digest()


def _bytecode_digest(fn: Callable) -> str:
    code = getattr(fn, "__code__", None)
    if code is None:
        raise TypeError(f"cannot key tiles of {fn!r}: no bytecode")
    return "bytecode:" + _code_fingerprint(code).hex()[:16]


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
    """Content-addressed tile results under `ResultsLayout.tiles` (``<results>/tiles/<key>.npz``,
    local or URI).

    Each tile stores a checksum of its arrays bound to its key (`_tile_checksum`), verified on
    read: a truncated, edited or swapped tile (another tile's valid .npz under this name) is
    recomputed, and said so: a warning in this process's log, and ``corrupt`` (count) /
    ``corrupt_notes`` (messages) for the trial to report to the driver (``tiles_corrupt``),
    since a trial's own log does not reach the driver's output.
    """

    def __init__(self, layout: ResultsLayout):
        self.fs, self.dir = layout.fs, layout.tiles
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


__all__ = ["TileCache", "tile_key"]
