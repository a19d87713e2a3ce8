"""Resumable streaming builds: the partial directory and its step checkpoints.

A streaming ``vcell build`` (:mod:`engine.build.stream`) of a large atlas takes hours, so it
is written into a deterministic partial directory next to the bundle, ``<out>.partial/``,
that is kept when the build fails or is interrupted (Ctrl-C included) and renamed to
``<out>`` only when every step has succeeded. After each long step (pass 1, PCA fit,
pass 2, FAISS index, clusters, layout, store and summaries) a small JSON record is
written atomically into ``<out>.partial/.checkpoint/``, together with whatever later steps
need and the bundle does not keep (gene statistics, per-gene value counts, the PCA sample).

``build_atlas(..., resume=True)`` (``vcell build --resume``) skips the recorded steps and
redoes the first unrecorded one from its start, after deleting its half-written files.
The record carries a fingerprint of the input (path, size and modification time, cell and
gene counts) and of the :class:`~engine.build.pipeline.BuildOptions`; a resume with a different input
or options is refused, as is a build without ``--resume`` while a partial directory exists
(it may hold hours of work).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from engine.errors import InputError
from engine.fileio import atomic_path, move_into_place, write_json
from engine.progress import Progress, report

CHECKPOINT_DIR = ".checkpoint"
"""Directory inside the partial bundle holding the records (removed before the final rename)."""
RECORD = "build.json"
STEPS = ("pass1", "pca", "pass2", "index", "clusters", "layout", "summaries", "pca_bundle")
"""The checkpointed steps, in build order (``pca_bundle``: the bundle complete up to DE and ``--model``)."""
KEPT = ("index/X_pca.faiss", "obsm/X_umap.npy")
"""PCA results that adding a learned model (:func:`engine.build.embed.add_learned_embedding`) replaces."""
PCA_MODEL = f"{CHECKPOINT_DIR}/pca_model"
"""Where the fitted PCA model is kept (``model/`` becomes the learned model's with ``--model``)."""
FORMAT = "vcell-build-checkpoint"


def partial_path(out: str | os.PathLike) -> Path:
    """The partial directory a streaming build of ``out`` is written into."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def input_fingerprint(source: str | os.PathLike) -> dict[str, Any]:
    """Identify ``source``: its path or URI and, when local, its size and modification time.

    A directory (SOMA experiment, generator output) counts its files, their total size and
    the latest modification time.
    """
    path = Path(source)
    if not path.exists():
        return {"source": str(source)}
    if path.is_file():
        stat = path.stat()
        return {"source": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    n_files, size, mtime = 0, 0, path.stat().st_mtime_ns
    for root, _, files in os.walk(path):
        for name in files:
            stat = os.stat(os.path.join(root, name))
            n_files, size, mtime = n_files + 1, size + stat.st_size, max(mtime, stat.st_mtime_ns)
    return {"source": str(path.resolve()), "files": n_files, "size": size, "mtime_ns": mtime}


class BuildCheckpoint:
    """The step records of one build in its partial directory (or none: ``root=None``).

    A disabled checkpoint (in-memory builds) records nothing and reports every step as
    not done, so the build code is the same with and without one.

    Parameters
    ----------
    root
        The partial bundle directory, or ``None`` for a disabled checkpoint.
    record
        The record: ``{"format", "fingerprint", "steps": {step: info}}``.
    """

    def __init__(self, root: Path | None, record: dict[str, Any] | None = None):
        self.root = root
        self.record = record or {"format": FORMAT, "fingerprint": {}, "steps": {}}

    @classmethod
    def disabled(cls) -> BuildCheckpoint:
        """A checkpoint that records nothing."""
        return cls(None)

    @property
    def dir(self) -> Path:
        """``.checkpoint/`` inside the partial directory."""
        return self.root / CHECKPOINT_DIR

    @property
    def resumed(self) -> list[str]:
        """The steps already done when this build started (or since)."""
        return [s for s in STEPS if s in self.record["steps"]]

    def done(self, step: str) -> dict[str, Any] | None:
        """The record of ``step`` when it was completed, else ``None``."""
        return self.record["steps"].get(step)

    def begin(self, step: str, *paths: str) -> None:
        """Start ``step``: delete what an interrupted earlier try left at ``paths`` (relative to the root)."""
        if self.root is None:
            return
        for relative in paths:
            target = self.root / relative
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()

    def complete(self, step: str, **info: Any) -> None:
        """Record ``step`` as done (with ``info``, JSON-able), atomically."""
        if self.root is None:
            return
        self.record["steps"][step] = info
        self._write()

    def keep_pca_bundle(self) -> None:
        """Record the bundle as complete up to DE and ``--model``, keeping hard links of :data:`KEPT`.

        Adding a learned model then replaces those files (new files, renamed into place), so the
        links still hold the PCA versions that :meth:`restore_pca_bundle` puts back.
        """
        if self.root is None:
            return
        for relative in KEPT:
            kept = self.dir / "kept" / relative
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.unlink(missing_ok=True)
            try:
                os.link(self.root / relative, kept)
            except OSError:  # no hard links on this file system
                shutil.copy2(self.root / relative, kept)
        self.complete("pca_bundle")

    def restore_pca_bundle(self) -> None:
        """Undo what an interrupted DE / ``--model`` step left, back to the recorded PCA bundle."""
        if self.root is None or self.done("pca_bundle") is None:
            return
        self.begin("pca_bundle", "model", "baselines", "model_seeds", "training", "summaries/de",
                   *(str(p.relative_to(self.root)) for p in self.root.glob("training-seed-*")),
                   *(f"obsm/{p.name}" for p in (self.root / "obsm").glob("X_*.npy") if p.name != "X_pca.npy"),
                   *(f"index/{p.name}" for p in (self.root / "index").glob("*")))
        for relative in KEPT:
            os.link(self.dir / "kept" / relative, self.root / relative)
        del self.record["steps"]["pca_bundle"]
        self._write()

    def skipped(self, progress: Progress | None, fraction: float, message: str) -> None:
        """Report a step skipped because a resumed build had done it."""
        report(progress, fraction, f"{message}: already done (resumed)")

    def check_shape(self, n_cells: int, n_genes: int) -> None:
        """Add the input's size to the fingerprint, or check it against the recorded one."""
        if self.root is None:
            return
        shape = {"n_cells": int(n_cells), "n_genes": int(n_genes)}
        recorded = self.record["fingerprint"].get("shape")
        if recorded is None:
            self.record["fingerprint"]["shape"] = shape
            self._write()
        elif recorded != shape:
            raise InputError(_mismatch(self.root, f"the input now has {n_cells:,} cells x {n_genes:,} genes, "
                                                  f"the interrupted build had {recorded['n_cells']:,} x "
                                                  f"{recorded['n_genes']:,}"))

    def save_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        """Keep ``arrays`` as ``.checkpoint/NAME.npz`` (atomically)."""
        if self.root is not None:
            with atomic_path(self.dir / f"{name}.npz") as tmp, open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

    def load_arrays(self, name: str) -> dict[str, np.ndarray]:
        """The arrays kept by :meth:`save_arrays`."""
        with np.load(self.dir / f"{name}.npz") as data:
            return {key: data[key] for key in data.files}

    def save_sparse(self, name: str, matrix: sp.spmatrix) -> None:
        """Keep a sparse matrix as ``.checkpoint/NAME.npz`` (atomically)."""
        if self.root is not None:
            with atomic_path(self.dir / f"{name}.npz") as tmp, open(tmp, "wb") as fh:
                sp.save_npz(fh, sp.csr_matrix(matrix))

    def load_sparse(self, name: str) -> sp.csr_matrix:
        """The matrix kept by :meth:`save_sparse`."""
        return sp.csr_matrix(sp.load_npz(self.dir / f"{name}.npz"))

    def _write(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(self.dir / RECORD, self.record)


@contextmanager
def resumable_build(out: str | os.PathLike, source: str | os.PathLike, options: Any, *,
                    overwrite: bool = False, resume: bool = False,
                    progress: Progress | None = None) -> Iterator[BuildCheckpoint]:
    """Yield the checkpoint of a streaming build of ``out``; rename its partial directory to ``out`` on success.

    Parameters
    ----------
    out
        The bundle directory to write.
    source
        The input (fingerprinted).
    options
        The :class:`~engine.build.pipeline.BuildOptions` (fingerprinted).
    overwrite
        Replace an existing ``out`` at the end.
    resume
        Continue the build recorded in ``<out>.partial/`` (when there is one).
    progress
        Progress callback (told which steps a resumed build skips).

    Raises
    ------
    InputError
        A partial directory exists and ``resume`` is false, or it was made from another input
        or with other options.
    """
    out = Path(out)
    partial = partial_path(out)
    fingerprint = {"input": input_fingerprint(source), "options": json.loads(json.dumps(asdict(options)))}
    if partial.exists() and not resume:
        raise InputError(f"{partial} holds an interrupted build of {out}: pass --resume (resume=True) to continue "
                         f"it, or remove {partial} to start again.")
    checkpoint = _open(partial, fingerprint) if partial.exists() else None
    if checkpoint is None:
        if partial.exists():
            shutil.rmtree(partial)  # interrupted before its first record: nothing to keep
        partial.mkdir(parents=True)
        checkpoint = BuildCheckpoint(partial, {"format": FORMAT, "fingerprint": fingerprint, "steps": {}})
        checkpoint._write()
    elif checkpoint.resumed:
        report(progress, 0.0, f"resuming the build in {partial} (done: {', '.join(checkpoint.resumed)})")
    yield checkpoint  # on any exception (KeyboardInterrupt too) the partial directory stays for --resume
    shutil.rmtree(checkpoint.dir, ignore_errors=True)
    if out.exists() and not overwrite:
        raise InputError(f"{out} appeared while building: choose another --out or pass --overwrite.")
    move_into_place(partial, out)


def _open(partial: Path, fingerprint: dict[str, Any]) -> BuildCheckpoint | None:
    """The checkpoint recorded in ``partial`` (``None`` when it has no record); refuse a different fingerprint."""
    path = partial / CHECKPOINT_DIR / RECORD
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    recorded = dict(record.get("fingerprint", {}))
    recorded.pop("shape", None)  # checked once the input is open (BuildCheckpoint.check_shape)
    if record.get("format") != FORMAT or recorded != fingerprint:
        raise InputError(_mismatch(partial, _difference(recorded, fingerprint)))
    return BuildCheckpoint(partial, record)


def _difference(recorded: dict[str, Any], current: dict[str, Any]) -> str:
    """Which input facts or options differ, in words."""
    changed = []
    for part in ("input", "options"):
        old, new = recorded.get(part, {}), current.get(part, {})
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                changed.append(f"{'option ' if part == 'options' else 'input '}{key}: "
                               f"{old.get(key)!r} then, {new.get(key)!r} now")
    return "; ".join(changed) or "the record is unreadable"


def _mismatch(partial: Path, what: str) -> str:
    return (f"{partial} holds an interrupted build of a different input or with different options ({what}). "
            f"Resume with the original input and options, or remove {partial} (or drop --resume and "
            "choose another --out) to start a new build.")
