"""PCA as an embedding model: the baseline every learned encoder is compared with.

Fitted on a reproducible sample of cells over the highly variable genes (standardised and
clipped, as scanpy does), then applied block by block to every cell, so it scales to atlases
that do not fit in memory. It saves as an ordinary checkpoint and can embed other data sets
with the same genes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from engine.models.checkpoint import Checkpoint

CLIP = 10.0


@dataclass
class PCAModel:
    """A fitted PCA over an ordered gene list.

    Attributes
    ----------
    genes
        Gene identifiers, in the column order :meth:`transform` expects.
    mean, scale
        Per-gene standardisation (log-normalised scale), clipped at +-10 afterwards.
    center
        Mean of the standardised values, removed before projection.
    components
        ``(n_components, n_genes)`` principal axes.
    explained_variance_ratio
        Fraction of the standardised variance per component.
    """

    genes: list[str]
    mean: np.ndarray
    scale: np.ndarray
    center: np.ndarray
    components: np.ndarray
    explained_variance_ratio: np.ndarray

    name = "pca"

    @property
    def n_components(self) -> int:
        """Embedding width."""
        return self.components.shape[0]

    def transform(self, block: sp.spmatrix | np.ndarray) -> np.ndarray:
        """Embed a block of cells (log-normalised, columns in :attr:`genes` order)."""
        dense = block.toarray() if sp.issparse(block) else np.asarray(block)
        z = np.clip((dense.astype(np.float32) - self.mean) / self.scale, -CLIP, CLIP)
        return ((z - self.center) @ self.components.T).astype(np.float32)

    def to_checkpoint(self) -> Checkpoint:
        """The model as a checkpoint (config, weights, genes)."""
        return Checkpoint(
            config={"model": "pca", "n_components": self.n_components, "n_genes": len(self.genes),
                    "input": "log1p(counts / total * 1e4), standardised, clipped at 10"},
            weights={"mean": self.mean, "scale": self.scale, "center": self.center, "components": self.components,
                     "explained_variance_ratio": self.explained_variance_ratio},
            genes=list(self.genes),
        )

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> PCAModel:
        """Rebuild the model from :meth:`to_checkpoint` output."""
        w = checkpoint.weights
        return cls(genes=checkpoint.genes, mean=w["mean"], scale=w["scale"], center=w["center"], components=w["components"],
                   explained_variance_ratio=w["explained_variance_ratio"])


def fit_pca(sample: sp.spmatrix | np.ndarray, genes: list[str], n_components: int = 50,
            seed: int = 0) -> PCAModel:
    """Fit PCA on a sample of cells (rows) over ``genes`` (columns), log-normalised.

    Parameters
    ----------
    sample
        Cells x genes, log-normalised; a few tens of thousands of cells is plenty.
    genes
        Column identifiers.
    n_components
        Embedding width; reduced when the sample is smaller.
    seed
        Seed of the randomised SVD.
    """
    from sklearn.decomposition import PCA

    dense = sample.toarray() if sp.issparse(sample) else np.asarray(sample)
    dense = dense.astype(np.float32)
    mean = dense.mean(axis=0)
    scale = dense.std(axis=0)
    scale[scale == 0] = 1.0
    z = np.clip((dense - mean) / scale, -CLIP, CLIP)
    n_components = int(min(n_components, z.shape[0] - 1, z.shape[1]))
    pca = PCA(n_components=n_components, svd_solver="randomized", random_state=seed)
    pca.fit(z)
    return PCAModel(genes=list(genes), mean=mean.astype(np.float32), scale=scale.astype(np.float32),
                    center=pca.mean_.astype(np.float32),
                    components=pca.components_.astype(np.float32),
                    explained_variance_ratio=pca.explained_variance_ratio_.astype(np.float32))
