"""How much the landmark layout loses against a full UMAP: time, kNN preservation, trustworthiness.

On a bundle (default: the 200k-cell generated one from ``benchmarks/scale.py``), the bundle's
own layout (UMAP on landmark cells, every other cell placed among its nearest landmarks;
:func:`engine.space.layout.umap_layout`) is compared with a full UMAP of every cell (the same function
with as many landmarks as cells), on the same embedding:

- ``knn_preserved@15``: for 2,000 random cells, the share of their 15 nearest neighbours in the
  embedding (exact, over all cells) that are also among their 15 nearest on the map;
- ``trustworthiness@15``: scikit-learn's, on a random 5,000-cell subsample (it is quadratic);
- a random layout gives the floor of both.

Usage::

    python benchmarks/layout_quality.py --bundle /tmp/scale/gen_200000.vcell
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import numpy as np
import pandas as pd
from mdtable import markdown

from engine.space.index import exact_neighbours

K = 15


def knn_preserved(embedding: np.ndarray, layout: np.ndarray, rows: np.ndarray, k: int = K) -> float:
    """Mean share of each row's ``k`` nearest cells in ``embedding`` that are among its ``k`` nearest on ``layout``."""
    high = exact_neighbours(embedding, np.ascontiguousarray(embedding[rows]), k + 1)
    low = exact_neighbours(np.ascontiguousarray(layout), np.ascontiguousarray(layout[rows]), k + 1)
    shared = [len(np.intersect1d(h[h != r], l[l != r])) for h, l, r in zip(high, low, rows)]
    return float(np.mean(shared) / k)


def trust(embedding: np.ndarray, layout: np.ndarray, rows: np.ndarray, k: int = K) -> float:
    """scikit-learn's trustworthiness of ``layout`` on the cells ``rows``."""
    from sklearn.manifold import trustworthiness

    return float(trustworthiness(embedding[rows], layout[rows], n_neighbors=k))


def main() -> None:
    """Compute the full UMAP, score both layouts and a random one, print one table."""
    from engine.bundle.atlas import read_atlas
    from engine.space.layout import umap_layout

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="/tmp/scale/gen_200000.vcell")
    args = parser.parse_args()
    atlas = read_atlas(args.bundle)
    embedding = np.ascontiguousarray(atlas.embedding(), dtype=np.float32)
    n = len(embedding)
    params = atlas.manifest.layout
    print(f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores; {args.bundle}: {n:,} cells, "
          f"{atlas.default_embedding} ({embedding.shape[1]} dims); bundle layout: {params.to_dict()}", flush=True)
    start = time.perf_counter()
    landmark, _ = umap_layout(embedding, n_landmarks=params.n_landmarks, seed=0)
    landmark_s = time.perf_counter() - start
    start = time.perf_counter()
    full, _ = umap_layout(embedding, n_landmarks=n, seed=0)
    full_s = time.perf_counter() - start
    rng = np.random.default_rng(1)
    layouts = {f"landmark UMAP ({params.n_landmarks:,} landmarks), every cell placed": (landmark,
                                                                                                        landmark_s),
               "full UMAP of every cell": (full, full_s),
               "random layout (floor)": (rng.normal(size=(n, 2)).astype(np.float32), 0.0)}
    knn_rows = np.sort(rng.choice(n, 2000, replace=False))
    trust_rows = np.sort(rng.choice(n, 5000, replace=False))
    rows = []
    for name, (coords, seconds) in layouts.items():
        rows.append({"layout": name, "seconds": seconds, "x full UMAP speed": full_s / seconds if seconds else np.nan,
                     f"knn_preserved@{K}": knn_preserved(embedding, coords, knn_rows),
                     f"trustworthiness@{K}": trust(embedding, coords, trust_rows)})
        print(rows[-1], flush=True)
    print(markdown(pd.DataFrame(rows), index=False))


if __name__ == "__main__":
    main()
