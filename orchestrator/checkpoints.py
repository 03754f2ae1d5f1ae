"""Trial checkpoints under the results root, keyed by trial_id, found by every later attempt.

Layout (any filesystem pyarrow opens: a local directory, s3://, gs://)::

    <root>/<sweep>/checkpoints/<trial_id>/<step:012d>-<nonce>/<files of the worker's dir>
    <root>/<sweep>/checkpoints/<trial_id>/<step:012d>-<nonce>/MANIFEST.json   (written last)

The worker (``workers/``, no Ray) writes a checkpoint into a local directory and passes it to
its ``report`` callback; `TrialCheckpoints.save` copies that directory here. Atomicity: the
manifest, holding the step and the size and SHA-256 of every file, is written after all the
files (to a temporary name, then renamed; one PUT on object storage), so a checkpoint directory
without a valid manifest is an unfinished write and never loaded. On load every file is checked
against its manifest entry; a corrupt checkpoint is reported loudly (logging + the returned
warnings, which the runner puts into the attempt's row) and deleted, and the previous complete
one is used. ``<nonce>`` makes two writers of the same step (an attempt that fell back past a
corrupt checkpoint and reaches its step again; a stray attempt of a dead driver) never share a
directory.

Why this store and not Tune's checkpoints: Tune keeps checkpoints inside the experiment
directory of one ``Tuner.fit`` call, so only a retry inside that run ever finds them; a
``symsweep resume`` or a re-submission on a new cluster starts a new experiment. This store is
found by every attempt of the trial, a Tune retry included, so it serves both and the trainable
reports no checkpoint to Tune (nothing is stored twice).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass

import pyarrow.fs as pafs

from orchestrator.fsio import sync_written, write_atomic
from orchestrator.layout import ResultsLayout

log = logging.getLogger("symsweep")

MANIFEST = "MANIFEST.json"
FORMAT = 1
DEFAULT_KEEP = 2  # complete checkpoints kept per trial while it runs


@dataclass
class Restored:
    """A checkpoint copied to a local directory: its step, where it lies, where it came from."""

    step: int
    local_dir: str
    source: str


def _sha256_file(path: str) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def _step_of(name: str) -> int | None:
    head = name.split("-", 1)[0]
    return int(head) if head.isdigit() else None


class TrialCheckpoints:
    """The checkpoints of one trial, under `ResultsLayout.checkpoints`
    (``<root>/<sweep>/checkpoints/<trial_id>/``).

    ``keep``: complete checkpoints kept while the trial runs (the newest ``keep``; 0 keeps all).
    One attempt of a trial writes at a time (the sweep's driver lock); readers never see a
    half checkpoint whatever happens to the writer.
    """

    def __init__(self, layout: ResultsLayout, trial_id: str, keep: int = DEFAULT_KEEP):
        self.fs = layout.fs
        self.dir = layout.checkpoints(trial_id)
        self.trial_id = trial_id
        self.keep = int(keep)

    # ------------------------------------------------------------------ listing
    def _entries(self) -> list[tuple[int, str, bool]]:
        """(step, dir name, has manifest) of every checkpoint directory, oldest first.

        Order: by step, then by name (the nonce starts with a time stamp, so of two writes of
        one step the later one sorts last)."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.dir, allow_not_found=True))
        except FileNotFoundError:
            return []
        out = []
        for i in infos:
            if i.type != pafs.FileType.Directory or i.base_name.startswith("."):
                continue
            step = _step_of(i.base_name)
            if step is None:
                continue
            m = self.fs.get_file_info(f"{i.path}/{MANIFEST}")
            out.append((step, i.base_name, m.type == pafs.FileType.File))
        return sorted(out)

    def entries(self) -> list[tuple[int, str, bool]]:
        """(step, path, complete) of every checkpoint directory on disk, oldest first;
        complete: it has its manifest (files are checked only when loaded)."""
        return [(step, f"{self.dir}/{name}", ok) for step, name, ok in self._entries()]

    def complete_steps(self) -> list[int]:
        """Steps of the checkpoints that have a manifest (not checked further), oldest first."""
        return [s for s, _, ok in self._entries() if ok]

    # ------------------------------------------------------------------ writing
    def save(self, local_dir: str, step: int) -> str:
        """Copy every file under ``local_dir`` into a new checkpoint of ``step``; the manifest
        last. Then drop checkpoints beyond ``keep`` and unfinished writes older than this one.
        Returns the checkpoint's path on the store's filesystem."""
        name = f"{int(step):012d}-{time.time_ns():020d}{uuid.uuid4().hex[:6]}"
        dest = f"{self.dir}/{name}"
        files: dict[str, dict[str, object]] = {}
        written: list[str] = []
        self.fs.create_dir(dest, recursive=True)
        for dirpath, dirnames, filenames in os.walk(local_dir):
            dirnames.sort()
            for fn in sorted(filenames):
                src = os.path.join(dirpath, fn)
                rel = os.path.relpath(src, local_dir).replace(os.sep, "/")
                if rel == MANIFEST:
                    raise ValueError(f"checkpoint dir {local_dir} holds a file named {MANIFEST}")
                size, digest = _sha256_file(src)
                files[rel] = {"size": size, "sha256": digest}
                if "/" in rel:
                    self.fs.create_dir(f"{dest}/{rel.rsplit('/', 1)[0]}", recursive=True)
                with open(src, "rb") as f, self.fs.open_output_stream(f"{dest}/{rel}") as out:
                    while chunk := f.read(1 << 20):
                        out.write(chunk)
                written.append(f"{dest}/{rel}")
        # locally: the files on disk before the manifest that declares the checkpoint complete
        sync_written(self.fs, written, dest)
        manifest = {"format": FORMAT, "trial_id": self.trial_id, "step": int(step),
                    "files": files, "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                time.gmtime())}
        write_atomic(self.fs, f"{dest}/{MANIFEST}", json.dumps(manifest, sort_keys=True).encode())
        self._prune(newest=(int(step), name))
        return dest

    def _prune(self, newest: tuple[int, str]) -> None:
        entries = self._entries()
        complete = [(s, n) for s, n, ok in entries if ok]
        drop = [n for s, n, ok in entries if not ok and (s, n) < newest]  # dead writes
        if self.keep > 0:
            drop += [n for _, n in complete[:-self.keep]]
        for n in drop:
            self._delete(n)

    def _delete(self, name: str) -> None:
        try:
            self.fs.delete_dir(f"{self.dir}/{name}")
        except FileNotFoundError:
            pass

    def remove_all(self) -> None:
        """Delete every checkpoint of the trial (it finished)."""
        try:
            self.fs.delete_dir(self.dir)
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------------ reading
    def _fetch(self, name: str, dest_dir: str) -> int:
        """Copy checkpoint ``name`` to ``dest_dir`` and verify it; returns its step. Raises
        ValueError (with the reason) when it does not match its manifest."""
        src = f"{self.dir}/{name}"
        try:
            with self.fs.open_input_stream(f"{src}/{MANIFEST}") as f:
                manifest = json.loads(f.read())
            files = manifest["files"]
            step = int(manifest["step"])
        except (ValueError, KeyError, TypeError) as ex:
            raise ValueError(f"manifest unreadable ({type(ex).__name__}: {ex})") from ex
        if manifest.get("format") != FORMAT or manifest.get("trial_id") != self.trial_id:
            raise ValueError(f"manifest of another format/trial ({manifest.get('format')}, "
                             f"{manifest.get('trial_id')})")
        if step != _step_of(name):
            raise ValueError(f"manifest says step {step}, the directory name {name}")
        for rel, want in sorted(files.items()):
            if rel.startswith("/") or ".." in rel.split("/"):
                raise ValueError(f"manifest names a path outside the checkpoint: {rel!r}")
            local = os.path.join(dest_dir, *rel.split("/"))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            h = hashlib.sha256()
            n = 0
            try:
                with self.fs.open_input_stream(f"{src}/{rel}") as f, open(local, "wb") as out:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                        n += len(chunk)
                        out.write(chunk)
            except FileNotFoundError as ex:
                raise ValueError(f"file {rel} is missing") from ex
            if n != want["size"] or h.hexdigest() != want["sha256"]:
                raise ValueError(f"file {rel} does not match its manifest ({n} bytes, sha256 "
                                 f"{h.hexdigest()[:12]}; expected {want['size']} bytes, "
                                 f"{str(want['sha256'])[:12]})")
        return step

    def restore_latest(self, dest_dir: str) -> tuple[Restored | None, list[str]]:
        """Copy the newest complete, valid checkpoint into ``dest_dir`` (an empty local
        directory). Returns (the checkpoint or None when the trial has no valid one, the
        warnings said on the way). A checkpoint failing validation is logged as a warning,
        deleted, and the previous one tried."""
        warnings: list[str] = []
        for step, name, ok in reversed(self._entries()):
            if not ok:
                log.info("trial %s: checkpoint %s has no manifest (unfinished write); "
                         "skipped", self.trial_id, name)
                continue
            for e in os.listdir(dest_dir):  # leftovers of a rejected candidate
                p = os.path.join(dest_dir, e)
                if os.path.isdir(p):
                    shutil.rmtree(p)
                else:
                    os.remove(p)
            try:
                got = self._fetch(name, dest_dir)
            except (ValueError, OSError) as ex:
                msg = (f"trial {self.trial_id}: checkpoint at step {step} ({self.dir}/{name}) "
                       f"is corrupt: {ex}; deleted it, falling back to the previous checkpoint")
                log.warning(msg)
                warnings.append(msg)
                self._delete(name)
                continue
            return Restored(step=got, local_dir=dest_dir, source=f"{self.dir}/{name}"), warnings
        if warnings:
            msg = f"trial {self.trial_id}: no valid checkpoint left; starting from step 0"
            log.warning(msg)
            warnings.append(msg)
        return None, warnings


def clear_tune_state(layout: ResultsLayout) -> int:
    """Delete every experiment directory under ``<root>/<sweep>/_tune`` (call it while holding
    the sweep's driver lock: no other driver of the sweep is running, so they are leftovers of
    finished or killed runs; checkpoints no longer live there). Returns how many it removed."""
    fs, d = layout.fs, layout.tune
    n = 0
    for i in fs.get_file_info(pafs.FileSelector(d, allow_not_found=True)):
        try:
            if i.type == pafs.FileType.Directory:
                fs.delete_dir(i.path)
            else:
                fs.delete_file(i.path)
            n += 1
        except FileNotFoundError:
            pass
    return n
