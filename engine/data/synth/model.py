"""The generative model behind a synthetic ("generated") atlas.

:func:`build_model` turns the real cell-type expression profiles of scanpy's bundled
``pbmc68k_reduced`` into a :class:`SynthModel`: genes, cell types, conditions with their
composition shifts and gene programmes, donors, batches, gene-wise dispersions and a
gene-regulatory network (:mod:`engine.data.synth.grn`). The model is small (arrays over
cell types, conditions, donors and genes, never over cells); :mod:`engine.data.synth.sample`
draws cells from it and :mod:`engine.data.synth.truth` derives the ground truth from it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from engine.data.shipped import SYNTH_PROGRAMMES, read_shipped_json
from engine.data.synth.grn import Grn, build_grn

SOURCE = "scanpy pbmc68k_reduced"

#: A typical PBMC composition (fractions, renormalised) for the ``bulk_labels`` of pbmc68k_reduced;
#: the bundled 700 cells over-sample dendritic cells, so their own frequencies are not used.
PBMC_COMPOSITION = {
    "CD4+/CD45RA+/CD25- Naive T": 0.15, "CD4+/CD45RO+ Memory": 0.15, "CD4+/CD25 T Reg": 0.04,
    "CD8+ Cytotoxic T": 0.12, "CD8+/CD45RA+ Naive Cytotoxic": 0.08, "CD56+ NK": 0.10,
    "CD19+ B": 0.10, "CD14+ Monocyte": 0.18, "Dendritic": 0.03, "CD34+": 0.01,
}
PROFILE_SHRINKAGE = 10.0  # pseudo-cells pulling small cell types' means toward the global mean


@dataclass
class SynthModel:
    """All parameters of the generator (arrays over genes G, cell types T, conditions C, donors D, batches B).

    ``base[t]`` is the relative expression profile of cell type ``t`` in the reference condition
    (rows sum to 1); ``lfc_celltype``/``lfc_shared`` are the programmes' log2 fold changes
    (``[0]`` is the reference condition: zeros); ``donor_log_noise``/``batch_log_factor`` are
    natural-log gene factors with mean-one exponentials.
    """

    genes: np.ndarray
    synthetic: np.ndarray
    cell_types: np.ndarray
    conditions: np.ndarray
    programmes: np.ndarray
    base: np.ndarray
    depth: np.ndarray
    composition: np.ndarray
    comp_multiplier: np.ndarray
    lfc_celltype: np.ndarray
    lfc_shared: np.ndarray
    dispersion: np.ndarray
    donors: np.ndarray
    donor_condition: np.ndarray
    donor_batch: np.ndarray
    donor_weight: np.ndarray
    donor_composition: np.ndarray
    donor_log_noise: np.ndarray
    batches: np.ndarray
    batch_log_factor: np.ndarray
    batch_depth: np.ndarray
    grn: Grn
    median_umis: float
    library_sdlog: float

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def lfc(self) -> np.ndarray:
        """Total direct programme log2 fold change, shape (C, T, G)."""
        return self.lfc_celltype + self.lfc_shared

    def gene_index(self) -> dict[str, int]:
        """Map gene name → column."""
        return {g: i for i, g in enumerate(self.genes)}

    def save(self, path: str | Path) -> None:
        """Write every parameter to one ``.npz`` (no pickles; :func:`load_model` reads it)."""
        arrays = {f.name: np.asarray(getattr(self, f.name)) for f in fields(self) if f.name != "grn"}
        arrays.update({f"grn_{k}": v for k, v in self.grn.arrays().items()})
        np.savez_compressed(path, **arrays)


def load_model(path: str | Path) -> SynthModel:
    """Read a :class:`SynthModel` written by :meth:`SynthModel.save` (``truth/model.npz``)."""
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    grn = Grn.from_arrays({k[4:]: v for k, v in data.items() if k.startswith("grn_")})
    kwargs = {f.name: data[f.name] for f in fields(SynthModel) if f.name != "grn"}
    kwargs["median_umis"] = float(kwargs["median_umis"])
    kwargs["library_sdlog"] = float(kwargs["library_sdlog"])
    return SynthModel(grn=grn, **kwargs)


@functools.lru_cache(maxsize=1)
def reference_profiles() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cell-type profiles of ``pbmc68k_reduced``: (genes, cell types, means (T, G), depth (T,)).

    Means are of ``expm1(raw.X)`` per ``bulk_labels`` group, shrunk toward the global mean by
    :data:`PROFILE_SHRINKAGE` pseudo-cells (the smallest groups have 8 cells); depth is each
    type's median ``n_counts`` relative to the overall median.
    """
    adata = _read_pbmc68k_reduced()
    raw = adata.raw.X
    expr = np.expm1(raw.toarray() if hasattr(raw, "toarray") else np.asarray(raw)).astype(np.float64)
    labels = adata.obs["bulk_labels"].astype(str).to_numpy()
    cell_types = np.array(sorted(set(labels)), dtype=str)
    glob = expr.mean(0)
    means, depth = [], []
    for t in cell_types:
        sel = labels == t
        means.append((expr[sel].sum(0) + PROFILE_SHRINKAGE * glob) / (sel.sum() + PROFILE_SHRINKAGE))
        depth.append(np.median(adata.obs["n_counts"].to_numpy()[sel]))
    depth = np.asarray(depth) / np.median(adata.obs["n_counts"].to_numpy())
    genes = np.array(adata.raw.var_names.tolist(), dtype=str)
    return genes, cell_types, np.asarray(means), depth


@functools.cache
def shared_programmes() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Name and real genes of the shared programme of the 1st, 2nd... non-reference condition (those present).

    Read from ``data/synth_programmes.json`` (``shared_programmes``).
    """
    entries = read_shipped_json(SYNTH_PROGRAMMES)["shared_programmes"]
    return tuple((str(entry["name"]), tuple(map(str, entry["genes"]))) for entry in entries)


def _read_pbmc68k_reduced():
    """scanpy's bundled file, read with anndata (importing scanpy itself takes seconds)."""
    import importlib.util
    import warnings

    import anndata as ad

    spec = importlib.util.find_spec("scanpy")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "datasets" / "10x_pbmc68k_reduced.h5ad"
        if path.exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return ad.read_h5ad(path)
    import scanpy as sc

    return sc.datasets.pbmc68k_reduced()


def slug(text: str) -> str:
    """A readable identifier fragment: ``"disease A"`` → ``"disease_A"``."""
    return re.sub(r"\W+", "_", str(text)).strip("_") or "x"


def build_model(
    n_genes: int | None, conditions: Sequence[str], n_donors_per_condition: int, n_batches: int,
    n_regulators: int, seed: int, median_umis: float = 4000.0,
) -> SynthModel:
    """Draw every parameter of the generator from ``seed`` (arguments as in ``generate_atlas``)."""
    rng = np.random.default_rng([seed, 0])
    real_genes, cell_types, means, depth = reference_profiles()
    genes, synthetic, profile = _choose_genes(rng, real_genes, means, n_genes)
    base = profile / profile.sum(1, keepdims=True)
    n_types, n_cond, n_g = len(cell_types), len(conditions), len(genes)

    ref = np.array([PBMC_COMPOSITION.get(t, 0.0) for t in cell_types])
    if ref.sum() <= 0 or (ref == 0).any():  # unknown labels: fall back to a flat composition
        ref = np.full(n_types, 1.0 / n_types)
    ref = ref / ref.sum()
    mult = np.ones((n_cond, n_types))
    for c in range(1, n_cond):
        picks = rng.choice(n_types, size=min(3, n_types), replace=False)
        signs = np.array([1.0, -1.0, rng.choice([-1.0, 1.0])])[: len(picks)]
        mult[c, picks] = 2.0 ** (signs * rng.uniform(0.8, 1.6, len(picks)))
    composition = ref * mult
    composition /= composition.sum(1, keepdims=True)

    programmes, lfc_shared, lfc_celltype = _programmes(rng, genes, base, n_cond)

    dispersion = np.clip(np.exp(rng.normal(np.log(0.15), 0.5, n_g)), 0.02, 1.5)

    n_donors = n_cond * n_donors_per_condition
    donor_condition = np.repeat(np.arange(n_cond), n_donors_per_condition)
    donor_batch = (np.tile(np.arange(n_donors_per_condition), n_cond) + donor_condition) % n_batches
    donors = np.array([f"{slug(conditions[c])}-D{j + 1}" for c in range(n_cond)
                       for j in range(n_donors_per_condition)])
    donor_weight = np.exp(rng.normal(0.0, 0.25, n_donors))
    donor_weight /= donor_weight.sum()
    donor_composition = np.vstack([rng.dirichlet(150.0 * composition[c]) for c in donor_condition])
    donor_composition = np.maximum(donor_composition, 1e-12)
    donor_composition /= donor_composition.sum(1, keepdims=True)
    sd_donor = 0.06  # per-gene donor noise (log scale): donors mildly distinct, cell types dominate
    donor_log_noise = rng.normal(0.0, sd_donor, (n_donors, n_g)) - sd_donor**2 / 2

    sd_batch = 0.1  # per-gene batch factors: visible, but no longer splits cell types on the map
    batch_log_factor = rng.normal(0.0, sd_batch, (n_batches, n_g)) - sd_batch**2 / 2
    batch_depth = rng.uniform(0.8, 1.25, n_batches)

    lfc = lfc_celltype + lfc_shared
    grn = build_grn(rng, base, composition[0], lfc, n_regulators, genes)
    return SynthModel(
        genes=genes, synthetic=synthetic, cell_types=cell_types, conditions=np.asarray(list(conditions)),
        programmes=programmes, base=base, depth=depth, composition=composition, comp_multiplier=mult,
        lfc_celltype=lfc_celltype, lfc_shared=lfc_shared, dispersion=dispersion, donors=donors,
        donor_condition=donor_condition, donor_batch=donor_batch, donor_weight=donor_weight,
        donor_composition=donor_composition, donor_log_noise=donor_log_noise,
        batches=np.array([f"batch{b + 1}" for b in range(n_batches)]), batch_log_factor=batch_log_factor,
        batch_depth=batch_depth, grn=grn, median_umis=float(median_umis), library_sdlog=0.4,
    )


def _choose_genes(rng: np.random.Generator, real: np.ndarray, means: np.ndarray,
                  n_genes: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep all real genes, the most informative ones, or add synthetic ``GEN-0001``... genes."""
    n_real = len(real)
    if n_genes is None or n_genes == n_real:
        return real, np.zeros(n_real, bool), means
    if n_genes < n_real:
        logm = np.log(means + 1e-9)
        keep: set[int] = set()
        per_type = max(1, n_genes // (4 * len(means)))
        for t in range(len(means)):  # markers: highest log-ratio to the other types' mean
            other = np.delete(logm, t, axis=0).mean(0)
            keep.update(np.argsort(-(logm[t] - other))[:per_type].tolist())
        score = np.argsort(np.argsort(-means.mean(0))) + np.argsort(np.argsort(-logm.std(0)))
        for g in np.argsort(score, kind="stable"):
            if len(keep) >= n_genes:
                break
            keep.add(int(g))
        idx = np.sort(np.fromiter(keep, int))[:n_genes]
        return real[idx], np.zeros(len(idx), bool), means[:, idx]
    n_syn = n_genes - n_real
    width = max(4, len(str(n_syn)))
    template = rng.integers(0, n_real, n_syn)
    scale = np.exp(rng.normal(0.0, 0.5, n_syn))[None, :] * np.exp(rng.normal(0.0, 0.3, (len(means), n_syn)))
    syn = means[:, template] * scale
    names = np.array([f"GEN-{i + 1:0{width}d}" for i in range(n_syn)])
    return (np.concatenate([real, names]), np.r_[np.zeros(n_real, bool), np.ones(n_syn, bool)],
            np.hstack([means, syn]))


def _programmes(rng: np.random.Generator, genes: np.ndarray, base: np.ndarray,
                n_cond: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shared and cell-type-specific programmes (log2 fold changes) per non-reference condition."""
    n_types, n_g = base.shape
    index = {g: i for i, g in enumerate(genes)}
    names = [""]
    lfc_shared = np.zeros((n_cond, n_types, n_g))
    lfc_ct = np.zeros((n_cond, n_types, n_g))
    n_shared = max(4, round(0.01 * n_g))
    n_ct = max(2, round(0.015 * n_g))
    shared = shared_programmes()
    for c in range(1, n_cond):
        name, wanted = shared[c - 1] if c - 1 < len(shared) else (f"shared programme {c}", ())
        members = [index[g] for g in wanted if g in index]
        if len(members) < 4:
            name = f"shared programme {c}"
            members = rng.choice(n_g, size=min(n_shared, n_g), replace=False).tolist()
        names.append(name)
        members = np.asarray(members)
        strength = rng.uniform(1.0, 2.5, len(members))
        types = rng.choice(n_types, size=int(np.ceil(0.7 * n_types)), replace=False)
        for t in types:
            lfc_shared[c, t, members] = strength * rng.uniform(0.6, 1.2, len(members))
        free = np.setdiff1d(np.arange(n_g), members)
        for t in range(n_types):
            expressed = free[base[t, free] >= np.quantile(base[t, free], 0.3)]
            high = free[base[t, free] >= np.median(base[t, free])]
            n_up = int(round(0.65 * n_ct))
            up = rng.choice(expressed, size=min(n_up, len(expressed)), replace=False)
            down = rng.choice(np.setdiff1d(high, up), size=min(n_ct - n_up, len(high)), replace=False)
            lfc_ct[c, t, up] = rng.uniform(0.8, 2.5, len(up))
            lfc_ct[c, t, down] = -rng.uniform(0.8, 2.0, len(down))
    return np.asarray(names), lfc_shared, lfc_ct
