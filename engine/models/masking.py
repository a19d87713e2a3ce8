"""Which genes a masked autoencoder hides: at random, or whole gene programmes at a time.

A mask is a boolean ``(B, G)`` tensor, ``True`` where a gene is hidden: the model sees 0 there
and is scored only on those genes. Gene-programme masking hides whole sets of co-regulated
genes, so the model cannot fill a gene in from its programme partners and has to use the rest
of the cell. Programmes come from a gene-set file (:func:`read_gene_sets`, GMT or two-column
TSV) or, when the user has none, are learned from co-expression
(:func:`programmes_from_coexpression`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from engine.data.gene_match import GeneMatcher
from engine.errors import InputError


def _check_rate(rate: float) -> float:
    rate = float(rate)
    if not 0.0 < rate < 1.0:
        raise InputError(f"The mask rate must be between 0 and 1 (exclusive), not {rate}.")
    return rate


class RandomMask:
    """Hide ``round(rate * G)`` genes per cell, chosen uniformly at random.

    Parameters
    ----------
    rate
        Fraction of genes hidden in every cell (exactly, up to rounding).
    """

    def __init__(self, rate: float = 0.5):
        self.rate = _check_rate(rate)

    def __call__(self, n_cells: int, n_genes: int, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
        """A boolean ``(n_cells, n_genes)`` mask, ``True`` = hidden."""
        k = max(1, min(n_genes, round(self.rate * n_genes)))
        where = generator.device if generator is not None else device
        scores = torch.rand(n_cells, n_genes, generator=generator, device=where)
        scores = scores.to(device) if device is not None else scores
        kth = scores.kthvalue(k, dim=1, keepdim=True).values
        return scores <= kth


class GeneProgrammeMask:
    """Hide whole gene programmes, in random order per cell, until ``rate`` of genes are hidden.

    Programmes are added one at a time (in a fresh random order for every cell) while fewer than
    ``rate * G`` genes are hidden, so the last programme may overshoot a little. Genes in no
    programme are never hidden; when the programmes cover fewer than ``rate * G`` genes every
    programme is hidden.

    Parameters
    ----------
    programmes
        Arrays of gene column indices (overlaps allowed).
    rate
        Target fraction of hidden genes.
    """

    def __init__(self, programmes: Sequence[np.ndarray], rate: float = 0.5):
        self.rate = _check_rate(rate)
        programmes = [np.unique(np.asarray(p, dtype=np.int64)) for p in programmes]
        self.programmes = [p for p in programmes if len(p)]
        if not self.programmes:
            raise InputError("Gene-programme masking needs at least one non-empty programme.")
        if min(int(p.min()) for p in self.programmes) < 0:
            raise InputError("Gene programmes must hold gene column indices (0 or more).")
        self._membership: torch.Tensor | None = None

    @property
    def n_programmes(self) -> int:
        """Number of (non-empty) programmes."""
        return len(self.programmes)

    def membership(self, n_genes: int) -> torch.Tensor:
        """Boolean ``(n_programmes, n_genes)``: gene ``g`` belongs to programme ``p``."""
        top = max(int(p.max()) for p in self.programmes)
        if top >= n_genes:
            raise InputError(f"A gene programme refers to gene {top}, outside the model's {n_genes} genes.")
        if self._membership is None or self._membership.shape[1] != n_genes:
            member = torch.zeros(self.n_programmes, n_genes, dtype=torch.bool)
            for i, p in enumerate(self.programmes):
                member[i, torch.from_numpy(p)] = True
            self._membership = member
        return self._membership

    def __call__(self, n_cells: int, n_genes: int, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
        """A boolean ``(n_cells, n_genes)`` mask made of whole programmes, ``True`` = hidden."""
        member = self.membership(n_genes)
        member = member.to(device) if device is not None else member
        target = self.rate * n_genes
        order = torch.rand(n_cells, self.n_programmes, generator=generator).argsort(dim=1).to(member.device)
        mask = torch.zeros(n_cells, n_genes, dtype=torch.bool, device=member.device)
        for step in range(self.n_programmes):
            active = mask.sum(dim=1) < target
            if not active.any():
                break
            rows = active.nonzero(as_tuple=True)[0]
            mask[rows] |= member[order[rows, step]]
        return mask


def programmes_from_coexpression(x: np.ndarray | sp.spmatrix, n_programmes: int = 50, seed: int = 0,
                                 max_cells: int = 5000) -> list[np.ndarray]:
    """Learn gene programmes by clustering genes on their co-expression across cells.

    Each gene's profile over a sample of cells is standardised and scaled to unit length, so the
    Euclidean distance between two profiles is a monotone function of their correlation;
    k-means on the profiles then groups correlated genes. Genes constant across the sample
    carry no co-expression and are left out of every programme.

    Parameters
    ----------
    x
        Cells × genes, log-normalised (dense or CSR); a few thousand cells suffice.
    n_programmes
        Number of clusters (fewer when there are fewer variable genes).
    seed
        Seed of the cell subsample and of k-means.
    max_cells
        Cells used at most (sampled without replacement).

    Returns
    -------
    list of numpy.ndarray
        Sorted gene column indices of each non-empty programme.
    """
    from sklearn.cluster import KMeans

    n_cells = x.shape[0]
    if n_cells < 3:
        raise InputError(f"Learning gene programmes needs at least 3 cells, got {n_cells}.")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n_cells, size=min(n_cells, max_cells), replace=False))
    block = x[rows]
    dense = np.asarray(block.toarray() if sp.issparse(block) else block, dtype=np.float64)
    dense = dense - dense.mean(axis=0)
    norms = np.linalg.norm(dense, axis=0)
    variable = np.flatnonzero(norms > 1e-12)
    if len(variable) < 2:
        raise InputError("Fewer than 2 genes vary across the sampled cells: no gene programmes can be learned.")
    profiles = (dense[:, variable] / norms[variable]).T.astype(np.float32)
    k = int(min(n_programmes, len(variable)))
    labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(profiles)
    return [np.sort(variable[labels == c]).astype(np.int64) for c in range(k) if np.any(labels == c)]


def read_gene_sets(path: str | os.PathLike, genes: Sequence[str], min_size: int = 2) -> list[np.ndarray]:
    """Read a gene-set file and map each set onto the model's genes.

    Formats: GMT (``name<TAB>description<TAB>gene<TAB>gene...`` per line, as MSigDB ships) or a
    two-column TSV/CSV (``set, gene`` per line; a header line is skipped when its second field
    matches no gene). Genes match by symbol or Ensembl ID (:class:`~engine.data.gene_match.GeneMatcher`: case-insensitive,
    ID versions ignored, symbols and IDs paired by the shipped GENCODE tables).

    Parameters
    ----------
    path
        The gene-set file.
    genes
        The model's genes, in column order.
    min_size
        Sets with fewer matched genes are dropped.

    Returns
    -------
    list of numpy.ndarray
        Sorted gene column indices per kept set, in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"The gene-set file {path} does not exist.")
    matcher = GeneMatcher(list(genes))
    lines = [ln.rstrip("\n\r") for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    sep = "\t" if any("\t" in ln for ln in lines[:5]) else ","
    rows = [[f.strip() for f in ln.split(sep)] for ln in lines]
    is_gmt = path.suffix.lower() == ".gmt" or any(len(r) > 2 for r in rows[:5])
    sets: dict[str, list[int]] = {}
    for r in rows:
        members = r[2:] if is_gmt else r[1:2]
        if not r[0] or not members:
            continue
        hits = matcher.positions([m for m in members if m])
        sets.setdefault(r[0], []).extend(int(h) for h in hits if h >= 0)
    programmes = [np.unique(np.asarray(v, dtype=np.int64)) for v in sets.values()]
    programmes = [p for p in programmes if len(p) >= min_size]
    if not programmes:
        raise InputError(f"No gene set in {path} has {min_size} or more of the model's {len(genes)} genes: "
                         "check that the file uses the same gene symbols or Ensembl IDs.")
    return programmes
