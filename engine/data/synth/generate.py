"""``vcell generate``: a synthetic ("generated") atlas of any size with its ground truth.

The cells come from the model of :mod:`engine.data.synth.model` (real PBMC cell-type profiles,
donors nested in conditions, composition shifts, condition programmes, batch effects, a
gene-regulatory network, negative-binomial counts), drawn block by block
(:mod:`engine.data.synth.sample`) and streamed to a TileDB-SOMA experiment chunk by chunk, so
memory stays bounded whatever ``n_cells``. The truth (:mod:`engine.data.synth.truth`) is
written beside the data.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import numbers
import os
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from itertools import islice
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from engine import __version__
from engine.data.store import soma_global_order
from engine.data.synth.model import SOURCE, SynthModel, build_model, reference_profiles, slug
from engine.data.synth.sample import Block, Sampler, block_size
from engine.data.synth.truth import write_truth
from engine.errors import GeneNotFoundError, InputError, suggest
from engine.fileio import atomic_dir, write_json
from engine.progress import Progress, report

FORMAT_VERSION = 1
H5AD_MAX_CELLS = 1_000_000
STATEMENT = ("GENERATED data: synthetic cells drawn from a negative-binomial model seeded with the real "
             "cell-type expression profiles of scanpy's pbmc68k_reduced; not measurements of real cells.")


def generate_atlas(
    out: str | os.PathLike, n_cells: int, *, n_genes: int | None = None,
    conditions: Sequence[str] = ("normal", "disease A", "disease B"), n_donors_per_condition: int = 4,
    n_batches: int = 2, n_regulators: int = 30, seed: int = 0, chunk_size: int = 50_000, fmt: str = "soma",
    overwrite: bool = False, progress: Progress | None = None, median_umis: float = 4000.0,
    perturbation: Mapping[str, float] | None = None, truth_cells: int = 4000, n_jobs: int = 1,
) -> Path:
    """Generate a synthetic atlas and its ground truth into the directory ``out`` (atomically).

    Parameters
    ----------
    out
        Output directory: ``atlas.soma/`` (or ``atlas.h5ad``), ``truth/``, ``generated.json``.
    n_cells
        Number of cells (i.i.d., in random order: any prefix is a representative sample).
    n_genes
        ``None``: the 765 real genes of pbmc68k_reduced; fewer keeps the most informative real
        genes (markers first); more adds synthetic genes ``GEN-0001``...
    conditions
        Condition names; the first is the reference (``disease`` column of obs).
    n_donors_per_condition, n_batches
        Donors ``<condition>-D1``... per condition, spread over batches ``batch1``...
    n_regulators
        Regulators of the gene-regulatory network (0 for none).
    seed
        The output is a function of the parameters and ``seed`` only (not of ``chunk_size``
        or ``n_jobs``).
    chunk_size
        Cells written per write (and held in memory at once).
    fmt
        ``"soma"`` (TileDB-SOMA, any size) or ``"h5ad"`` (built in memory: at most
        :data:`H5AD_MAX_CELLS` cells).
    overwrite
        Replace an existing ``out``.
    progress
        Progress callback.
    median_umis
        Median library size (UMIs per cell) before cell-type and batch depth factors.
    perturbation
        Gene → multiplier applied in every cell (0 knock-out, 0.5 knock-down, 4 over-expression;
        regulators also move their targets); for interventional data. The truth stays that of
        the unperturbed model.
    truth_cells
        Monte Carlo cells per population for the truth's log-normalised shifts.
    n_jobs
        Worker processes sampling blocks while the main process writes. Workers are started
        with "spawn", so a calling script needs the usual ``if __name__ == "__main__":`` guard.

    Returns
    -------
    pathlib.Path
        The output directory.
    """
    _validate(n_cells, n_genes, conditions, n_donors_per_condition, n_batches, n_regulators, seed, chunk_size,
              fmt, median_umis, truth_cells, n_jobs)
    params = {"n_cells": int(n_cells), "n_genes": n_genes, "conditions": list(conditions),
              "n_donors_per_condition": n_donors_per_condition, "n_batches": n_batches,
              "n_regulators": n_regulators, "seed": seed, "median_umis": median_umis,
              "perturbation": dict(perturbation) if perturbation else None, "truth_cells": truth_cells}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        report(progress, 0.0, "building the generative model")
        model = build_model(n_genes, list(conditions), n_donors_per_condition, n_batches, n_regulators, seed,
                            median_umis)
        _check_perturbation(model, perturbation)
        sampler = Sampler(model, perturbation)
        info = _info(model, params, fmt)
        writer = _SomaWriter(tmp / "atlas.soma", model, n_cells, info) if fmt == "soma" else \
            _H5adWriter(tmp / "atlas.h5ad", model, info)
        with closing(writer):
            done = 0
            for start, pieces in _chunks(sampler, seed, n_cells, chunk_size, n_jobs):
                writer.write(start, pieces)
                done += sum(len(piece) for piece in pieces)
                report(progress, 0.02 + 0.83 * done / n_cells, f"generating cells ({done:,}/{n_cells:,})")
            writer.finish()
        write_truth(model, tmp / "truth", truth_cells, seed,
                    lambda f, m: report(progress, 0.85 + 0.14 * f, m))
        write_json(tmp / "generated.json", info)
    report(progress, 1.0, "generated atlas written")
    return Path(out)


def load_truth(path: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """Read the truth tables of a generated atlas (``out`` or ``out/truth``): name → DataFrame.

    Names: ``de``, ``composition``, ``donors``, ``donor_composition``, ``genes``, ``grn``,
    ``perturbations`` (see ``truth/README.md``).
    """
    path = Path(path)
    truth = path / "truth" if (path / "truth").is_dir() else path
    files = sorted(truth.glob("*.csv"))
    if not files:
        raise InputError(f"{path} holds no truth tables: point at a directory written by `vcell generate`.")
    return {f.stem: pd.read_csv(f) for f in files}


def _chunks(sampler: Sampler, seed: int, n_cells: int, chunk_size: int,
            n_jobs: int) -> Iterator[tuple[int, list[Block]]]:
    """Yield ``(first row, pieces)``: consecutive blocks (or parts) totalling ``chunk_size`` cells."""
    pending: list[Block] = []
    start = n_pending = 0
    for block in _blocks(sampler, seed, n_cells, n_jobs):
        while len(block):
            take = min(len(block), chunk_size - n_pending)
            pending.append(block.slice(0, take))
            block = block.slice(take, len(block))
            n_pending += take
            if n_pending == chunk_size:
                yield start, pending
                start, pending, n_pending = start + chunk_size, [], 0
    if pending:
        yield start, pending


def _blocks(sampler: Sampler, seed: int, n_cells: int, n_jobs: int) -> Iterator[Block]:
    size = block_size(sampler.model.n_genes)
    jobs = [(k, min(size, n_cells - k * size)) for k in range(math.ceil(n_cells / size))]
    if n_jobs <= 1 or len(jobs) == 1:
        for k, n in jobs:
            yield sampler.sample_block(seed, k, n)
        return
    with ProcessPoolExecutor(n_jobs, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(sampler,)) as pool:
        queue = deque(pool.submit(_work, seed, k, n) for k, n in islice(iter(jobs), 2 * n_jobs))
        rest = iter(jobs[2 * n_jobs:])
        while queue:
            block = queue.popleft().result()
            nxt = next(rest, None)
            if nxt is not None:
                queue.append(pool.submit(_work, seed, *nxt))
            yield block


_WORKER: dict[str, Sampler] = {}


def _init_worker(sampler: Sampler) -> None:
    _WORKER["sampler"] = sampler


def _work(seed: int, block: int, n: int) -> Block:
    return _WORKER["sampler"].sample_block(seed, block, n)


class _SomaWriter:
    """Create a TileDB-SOMA experiment (obs, ms/RNA/var, ms/RNA/X/counts) and append chunks."""

    def __init__(self, uri: Path, model: SynthModel, n_cells: int, info: dict):
        import pyarrow as pa
        import tiledbsoma as soma

        self.pa, self.model = pa, model
        self.width = len(str(max(n_cells - 1, 0)))
        cat = pa.dictionary(pa.int32(), pa.large_string())
        self.schema = pa.schema([("soma_joinid", pa.int64()), ("obs_id", pa.large_string()),
                                 ("cell_type", cat), ("disease", cat), ("donor_id", cat), ("batch", cat)])
        self.values = {"cell_type": pa.array(model.cell_types.tolist(), pa.large_string()),
                       "disease": pa.array(model.conditions.tolist(), pa.large_string()),
                       "donor_id": pa.array(model.donors.tolist(), pa.large_string()),
                       "batch": pa.array(model.batches.tolist(), pa.large_string())}
        # Children are created on their own and linked by relative URI (the store is renamed
        # into place afterwards; enumerations written through add_new_dataframe's handle were lost).
        self.exp = soma.Experiment.create(str(uri))
        self.exp.metadata["generated"] = json.dumps(info)
        self.obs = soma.DataFrame.create(str(uri / "obs"), schema=self.schema, index_column_names=["soma_joinid"],
                                         domain=[(0, n_cells - 1)])
        self.exp.set("obs", self.obs, use_relative_uri=True)
        ms = soma.Collection.create(str(uri / "ms"))
        rna = soma.Measurement.create(str(uri / "ms" / "RNA"))
        var_schema = pa.schema([("soma_joinid", pa.int64()), ("var_id", pa.large_string()),
                                ("feature_name", pa.large_string()), ("synthetic", pa.bool_())])
        with soma.DataFrame.create(str(uri / "ms" / "RNA" / "var"), schema=var_schema,
                                   index_column_names=["soma_joinid"], domain=[(0, model.n_genes - 1)]) as var:
            var.write(pa.table({"soma_joinid": np.arange(model.n_genes, dtype=np.int64),
                                "var_id": model.genes.tolist(), "feature_name": model.genes.tolist(),
                                "synthetic": model.synthetic.astype(bool)}, schema=var_schema))
            rna.set("var", var, use_relative_uri=True)
        x = soma.Collection.create(str(uri / "ms" / "RNA" / "X"))
        # Coordinates are written in TileDB's global order, built and checked here (tests compare the
        # store with an in-memory copy), so TileDB's own sort and order/duplicate checks are skipped.
        unchecked = soma.SOMATileDBContext(tiledb_config={
            "sm.check_global_order": "false", "sm.check_coord_dups": "false", "sm.check_coord_oob": "false"})
        self.counts = soma.SparseNDArray.create(str(uri / "ms" / "RNA" / "X" / "counts"), type=pa.float32(),
                                                shape=(n_cells, model.n_genes), context=unchecked)
        x.set("counts", self.counts, use_relative_uri=True)
        tiles = json.loads(self.counts.schema_config_options().dims)
        self.tile = (int(tiles["soma_dim_0"]["tile"]), int(tiles["soma_dim_1"]["tile"]))
        rna.set("X", x, use_relative_uri=True)
        ms.set("RNA", rna, use_relative_uri=True)
        self.exp.set("ms", ms, use_relative_uri=True)
        self._closing = [x, rna, ms]

    def write(self, start: int, pieces: list[Block]) -> None:
        pa, m = self.pa, self.model
        n = sum(len(piece) for piece in pieces)
        donor = np.concatenate([piece.donor for piece in pieces])
        ids = np.char.add("cell", np.char.zfill(np.arange(start, start + n).astype(str), self.width))
        codes = {"cell_type": np.concatenate([piece.cell_type for piece in pieces]),
                 "disease": m.donor_condition[donor], "donor_id": donor, "batch": m.donor_batch[donor]}
        columns = {"soma_joinid": np.arange(start, start + n, dtype=np.int64),
                   "obs_id": pa.array(ids.tolist(), pa.large_string())}
        for key, code in codes.items():
            columns[key] = pa.DictionaryArray.from_arrays(pa.array(code.astype(np.int32)), self.values[key])
        self.obs.write(pa.table(columns, schema=self.schema))
        # Row-major COO, columns sorted within rows: TileDB's global order when genes fit one tile.
        per_row = np.concatenate([np.diff(piece.indptr) for piece in pieces])
        rows = np.repeat(np.arange(start, start + n, dtype=np.int64), per_row)
        cols = np.concatenate([piece.indices for piece in pieces], dtype=np.int64)
        data = np.concatenate([piece.data for piece in pieces])
        rows, cols, data = soma_global_order(rows, cols, data, self.tile)
        self.counts.write(pa.table({"soma_dim_0": rows, "soma_dim_1": cols, "soma_data": data}),
                          platform_config={"tiledb": {"write": {"sort_coords": False}}})

    def finish(self) -> None:
        """Nothing left to write: every chunk is already in the store."""

    def close(self) -> None:
        for handle in (self.obs, self.counts, *self._closing, self.exp):
            handle.close()


class _H5adWriter:
    """Collect chunks in memory and write one ``.h5ad`` at the end (small atlases only)."""

    def __init__(self, path: Path, model: SynthModel, info: dict):
        self.path, self.model, self.info, self.blocks = path, model, info, []

    def write(self, start: int, pieces: list[Block]) -> None:
        self.blocks.extend(pieces)

    def close(self) -> None:
        self.blocks = []

    def finish(self) -> None:
        import anndata as ad

        m = self.model
        donor = np.concatenate([b.donor for b in self.blocks])
        cell_type = np.concatenate([b.cell_type for b in self.blocks])
        counts = sp.vstack([b.csr() for b in self.blocks], format="csr")
        n = len(donor)
        width = len(str(max(n - 1, 0)))
        obs = pd.DataFrame({
            "cell_type": pd.Categorical.from_codes(cell_type, m.cell_types.tolist()),
            "disease": pd.Categorical.from_codes(m.donor_condition[donor], m.conditions.tolist()),
            "donor_id": pd.Categorical.from_codes(donor, m.donors.tolist()),
            "batch": pd.Categorical.from_codes(m.donor_batch[donor], m.batches.tolist()),
        }, index=[f"cell{i:0{width}d}" for i in range(n)])
        var = pd.DataFrame({"feature_name": m.genes, "synthetic": m.synthetic}, index=pd.Index(m.genes))
        adata = ad.AnnData(counts, obs=obs, var=var, uns={"generated": json.loads(json.dumps(self.info))})
        adata.write_h5ad(self.path)


def _info(model: SynthModel, params: dict, fmt: str) -> dict:
    return {
        "generated": True, "generator": "vcell generate", "version": FORMAT_VERSION, "engine_version": __version__,
        "statement": STATEMENT, "source_profiles": SOURCE, "seed": params["seed"], "n_cells": params["n_cells"],
        "n_genes": model.n_genes, "parameters": params, "format": fmt,
        "store": "atlas.soma" if fmt == "soma" else "atlas.h5ad", "measurement": "RNA", "x_layer": "counts",
        "obs_columns": {"cell_type": "cell_type", "condition": "disease", "donor": "donor_id", "batch": "batch"},
        "reference_condition": str(model.conditions[0]), "cell_types": model.cell_types.tolist(),
        "truth": "truth/", "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _check_perturbation(model: SynthModel, perturbation: Mapping[str, float] | None) -> None:
    if not perturbation:
        return
    genes = model.gene_index()
    for gene, value in perturbation.items():
        if gene not in genes:
            raise GeneNotFoundError(f"perturbed gene {gene!r} is not among the generated genes."
                                    + suggest(gene, genes))
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value >= 0):
            raise InputError(f"perturbation multiplier for {gene} must be a finite number >= 0 (got {value!r}).")


def _validate(n_cells, n_genes, conditions, n_donors, n_batches, n_regulators, seed, chunk_size, fmt,
              median_umis, truth_cells, n_jobs) -> None:
    def whole(value: object, name: str, low: int) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise InputError(f"{name} must be a whole number of at least {low} (got {value!r}).")

    whole(n_cells, "n_cells", 1)
    if fmt not in ("soma", "h5ad"):
        raise InputError(f"unknown format {fmt!r}: use 'soma' (any size) or 'h5ad' (small atlases).")
    if fmt == "h5ad" and n_cells > H5AD_MAX_CELLS:
        raise InputError(f"h5ad output is built in memory and limited to {H5AD_MAX_CELLS:,} cells: "
                         f"use fmt='soma' for {n_cells:,} cells.")
    if isinstance(conditions, str) or len(conditions) < 2:
        raise InputError("give at least two conditions (the first is the reference, e.g. 'normal').")
    names = [str(c).strip() for c in conditions]
    if any(not c for c in names) or len(set(names)) != len(names):
        raise InputError(f"condition names must be distinct and non-empty (got {list(conditions)!r}).")
    if len({slug(c) for c in names}) != len(names):
        raise InputError(f"condition names must differ in their letters and digits (got {list(conditions)!r}).")
    if n_genes is not None:
        whole(n_genes, "n_genes", 20)
    whole(n_donors, "n_donors_per_condition", 1)
    whole(n_batches, "n_batches", 1)
    if n_batches > n_donors * len(names):
        raise InputError(f"n_batches ({n_batches}) exceeds the number of donors ({n_donors * len(names)}).")
    whole(n_regulators, "n_regulators", 0)
    genes = n_genes if n_genes is not None else len(reference_profiles()[0])
    if n_regulators > genes // 5:
        raise InputError(f"n_regulators ({n_regulators}) must be at most a fifth of the genes ({genes // 5}).")
    whole(seed, "seed", 0)
    whole(chunk_size, "chunk_size", 1)
    whole(truth_cells, "truth_cells", 10)
    whole(n_jobs, "n_jobs", 1)
    if not (isinstance(median_umis, numbers.Real) and math.isfinite(median_umis) and median_umis > 0):
        raise InputError(f"median_umis must be a positive number (got {median_umis!r}).")
