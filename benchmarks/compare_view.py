"""Benchmark: how fast the Compare page answers, from cached summaries vs computing DE on demand.

For one contrast (reference vs another condition, in the most common cell type) it times each
engine call the Compare page makes: pseudobulk DE read from the bundle's cache (`vcell de`) and
computed on demand, the cell-level Wilcoxon fast path, composition, the dot plot from summaries,
and the embedding shift; then the whole page under Streamlit's AppTest (a real script run) with
the cache present. Calls are timed in this process after one warm-up read of the bundle.

Usage::

    python benchmarks/compare_view.py BUNDLE [BUNDLE ...]   # bundles with cell types, conditions, donors
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.bundle.atlas import read_atlas  # noqa: E402
from engine.compare.conditions import compare_conditions  # noqa: E402
from engine.compare.composition import composition_shift  # noqa: E402
from engine.compare.dotplot import dot_plot_table, top_genes  # noqa: E402
from engine.compare.pseudobulk import cached_de, contrast_de  # noqa: E402
from engine.compare.shift import atlas_embedding_shift  # noqa: E402


def timed(call) -> tuple[float, object]:
    """Wall seconds of ``call()`` and its result."""
    start = time.perf_counter()
    out = call()
    return time.perf_counter() - start, out


def page_seconds(bundle: Path) -> float:
    """Wall seconds of one AppTest run of the Compare page (after the app's first run)."""
    from streamlit.testing.v1 import AppTest

    os.environ["VCELL_BUNDLE"] = str(bundle)
    app = AppTest.from_file(str(ROOT / "app" / "streamlit_app.py"), default_timeout=600).run()
    start = time.perf_counter()
    app.switch_page("views/compare.py").run()
    seconds = time.perf_counter() - start
    if app.exception or app.error:
        raise RuntimeError(f"the Compare page failed: {[e.value for e in app.error]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    args = parser.parse_args()
    print(f"# Compare view, {platform.machine()} {os.cpu_count()} cores, {date.today()}")
    print("| bundle | cells | contrast | DE cached | DE on demand | Wilcoxon | composition | dot plot | "
          "embedding shift | whole page (cached) |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for bundle in args.bundles:
        atlas = read_atlas(bundle)
        roles = atlas.roles
        a = atlas.reference_condition or atlas.categories("condition")[0]
        b = next(c for c in atlas.categories("condition") if c != a)
        cell_type = atlas.obs[roles["cell_type"]].astype(str).value_counts().index[0]
        if cached_de(atlas, a, b, cell_type) is None:
            subprocess.run([str(Path(sys.executable).with_name("vcell")), "de", str(bundle), "--cell-type",
                            cell_type, "--condition", b, "--reference", a], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            atlas = read_atlas(bundle)
        _ = atlas.obs, atlas.summaries, atlas.embedding()  # warm-up: what the app holds after its first run
        cached, de = timed(lambda: compare_conditions(atlas, a, b, cell_type=cell_type, method="pseudobulk").de)
        fresh, _ = timed(lambda: contrast_de(atlas, a, b, cell_type, use_cache=False))
        wilcoxon, _ = timed(lambda: compare_conditions(atlas, a, b, cell_type=cell_type, method="wilcoxon"))
        comp, _ = timed(lambda: composition_shift(atlas.obs, a, b, cell_type_key=roles["cell_type"],
                                                  condition_key=roles["condition"], donor_key=roles["donor"]))
        genes = top_genes(de, 8)
        dots, _ = timed(lambda: dot_plot_table(atlas.summaries, atlas.genes.resolve_many(genes), genes,
                                               conditions=[a, b], min_cells=10))
        shift, _ = timed(lambda: atlas_embedding_shift(atlas, a, b))
        page = page_seconds(Path(bundle))
        print(f"| {Path(bundle).name} | {atlas.n_cells:,} | {b} vs {a}, {cell_type} | {cached:.3f} s | {fresh:.2f} s "
              f"| {wilcoxon:.2f} s | {comp:.3f} s | {dots:.3f} s | {shift:.3f} s | {page:.2f} s |")


if __name__ == "__main__":
    main()
