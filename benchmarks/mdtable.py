"""Markdown pipe tables for the benchmarks' printed results (no extra dependency)."""

from __future__ import annotations

import pandas as pd


def markdown(frame: pd.DataFrame, index: bool = True, digits: int = 3) -> str:
    """A pipe table of ``frame`` (its index as leading columns when ``index``), floats to ``digits`` decimals."""
    frame = frame.reset_index() if index else frame
    cells = [[f"{v:,.{digits}f}" if isinstance(v, float) else str(v) for v in row]
             for row in frame.itertuples(index=False)]
    rows = [list(map(str, frame.columns)), ["---"] * frame.shape[1], *cells]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)
