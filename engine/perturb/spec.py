"""In-silico perturbation: specification, clamping and the baseline virtual cells.

A perturbation knocks out (``ko``), knocks down (``kd``) or over-expresses (``oe``) up to
:data:`MAX_GENES` genes in a population of cells. :func:`clamp_targets` turns control values
of the target genes into perturbed ones; predictors then say how every other gene moves:

- :func:`no_change_baseline`: nothing but the targets moves.
- :func:`ridge_perturbation`: a linear co-expression baseline. In the population, every gene
  is regressed on the (standardised) target genes by ridge regression; the predicted mean
  shift of gene g is ``beta_g . mean(z_perturbed - z_control)``. It knows co-expression, not
  causation, and is labelled as such.

The model-based virtual cell (masked autoencoder) reuses the spec, the clamp and the table
shape. :func:`perturb` is the thin wrapper over an :class:`~engine.bundle.atlas.Atlas`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from engine.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    pass

MAX_GENES = 10
MODES = {"ko": "knock-out", "kd": "knock-down", "oe": "over-expression"}
_ALIASES = {"knockout": "ko", "knock-out": "ko", "knockdown": "kd", "knock-down": "kd",
            "overexpression": "oe", "over-expression": "oe"}
DEFAULT_STRENGTH = {"ko": 0.0, "kd": 0.5, "oe": 4.0}
RIDGE_METHOD = "ridge co-expression baseline"
NO_CHANGE_METHOD = "no-change baseline"
OE_CAP_PERCENTILE = 99.0
MIN_EXPRESSING_FRACTION = 0.01
MIN_EXPRESSING_CELLS = 10
MIN_DONORS_FOR_BOOTSTRAP = 3
EXTRAPOLATION_SD = 3.0
TABLE_COLUMNS = ["gene", "mean_control", "shift", "ci_low", "ci_high", "mean_perturbed", "is_target"]


@dataclass
class PerturbationSpec:
    """What to do to which genes.

    Parameters
    ----------
    genes
        Gene labels or indices (1 to :data:`MAX_GENES`, no repeats).
    mode
        ``"ko"`` (set to 0), ``"kd"`` (keep ``strength`` of the value, default 0.5) or ``"oe"``
        (multiply by ``strength``, default 4.0); long names such as ``"knockout"`` are accepted.
    strength
        ``kd``: remaining fraction in ``[0, 1)``; ``oe``: multiple in ``(1, 100]``; ignored for ``ko``.
    """

    genes: list[str | int]
    mode: str
    strength: float | None = None

    def __post_init__(self) -> None:
        mode = _ALIASES.get(str(self.mode).strip().lower(), str(self.mode).strip().lower())
        if mode not in MODES:
            raise InputError(f"Unknown perturbation mode '{self.mode}': use ko (knock-out), kd (knock-down) or oe (over-expression).")
        self.mode = mode
        if isinstance(self.genes, (str, int, np.integer)):
            self.genes = [self.genes]
        self.genes = list(self.genes)
        if not self.genes:
            raise InputError("No gene to perturb: name at least one gene.")
        if len(self.genes) > MAX_GENES:
            raise InputError(f"{len(self.genes)} genes were given: perturb at most {MAX_GENES} at once.")
        seen: set[str] = set()
        for gene in self.genes:
            if str(gene).upper() in seen:
                raise InputError(f"{gene} is listed twice: name each gene once.")
            seen.add(str(gene).upper())
        if self.strength is None or mode == "ko":
            self.strength = DEFAULT_STRENGTH[mode]
        strength = float(self.strength)
        if mode == "kd" and not 0.0 <= strength < 1.0:
            raise InputError(f"Knock-down strength {strength:g} is not a remaining fraction: use a value from 0 to below 1.")
        if mode == "oe" and not 1.0 < strength <= 100.0:
            raise InputError(f"Over-expression strength {strength:g} is not a multiple above 1: use a value from above 1 to 100.")
        self.strength = strength

    def describe(self, labels: Sequence[str] | None = None) -> str:
        """A short phrase such as ``"knock-out of STAT1, IRF1"`` or ``"knock-down to 50% of ISG15"``."""
        names = ", ".join(str(g) for g in (labels if labels is not None else self.genes))
        if self.mode == "kd":
            return f"knock-down to {self.strength:.0%} of {names}"
        if self.mode == "oe":
            return f"over-expression ({self.strength:g}x) of {names}"
        return f"knock-out of {names}"


def clamp_targets(values: np.ndarray, spec: PerturbationSpec, *, cap: np.ndarray | None = None,
                  level: np.ndarray | None = None) -> np.ndarray:
    """Perturbed log-normalised values of the target genes.

    ``ko`` sets 0. ``kd`` keeps ``strength`` of each value on the linear scale:
    ``log1p(strength * expm1(x))``. ``oe`` multiplies on the linear scale, raising cells below
    the typical expressed level (silent ones included) to it first, caps at a high percentile
    and never lowers a value:
    ``max(x, log1p(min(strength * max(expm1(x), level), cap)))``.

    Parameters
    ----------
    values
        Control values, cells x targets (log1p of counts per 10,000).
    spec
        The perturbation.
    cap, level
        Per target, on the linear scale: the over-expression ceiling (default: the
        :data:`OE_CAP_PERCENTILE` th percentile among expressing cells of ``values``) and the
        level silent cells are raised from (default: the mean among expressing cells). Pass
        atlas-wide values to make the population's own distribution irrelevant.
    """
    x = np.asarray(values, dtype=np.float64)
    if spec.mode == "ko":
        return np.zeros_like(x)
    linear = np.expm1(x)
    if spec.mode == "kd":
        return np.log1p(spec.strength * linear)
    if cap is None or level is None:
        cap_est, level_est = expressed_stats(x)
        cap = cap_est if cap is None else cap
        level = level_est if level is None else level
    cap = np.asarray(cap, dtype=np.float64)
    level = np.asarray(level, dtype=np.float64)
    raised = np.minimum(spec.strength * np.maximum(linear, level), cap)
    return np.maximum(x, np.log1p(raised))


def expressed_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of log values: (cap, level) on the linear scale among expressing cells.

    ``cap`` is the :data:`OE_CAP_PERCENTILE` th percentile and ``level`` the mean of
    ``expm1(x)`` over cells with ``x > 0``; both are 0 for a column with no expressing cell.
    """
    x = np.atleast_2d(np.asarray(values, dtype=np.float64))
    cap, level = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for j in range(x.shape[1]):
        on = np.expm1(x[x[:, j] > 0, j])
        if on.size:
            cap[j], level[j] = np.percentile(on, OE_CAP_PERCENTILE), on.mean()
    return cap, level


def shift_table(labels: Sequence[str], mean_control: np.ndarray, shift: np.ndarray, low: np.ndarray,
           high: np.ndarray, targets: np.ndarray) -> pd.DataFrame:
    """The :data:`TABLE_COLUMNS` table of a prediction, sorted by ``|shift|`` descending."""
    is_target = np.zeros(len(labels), dtype=bool)
    is_target[targets] = True
    table = pd.DataFrame({"gene": [str(g) for g in labels], "mean_control": mean_control, "shift": shift,
                          "ci_low": low, "ci_high": high, "mean_perturbed": mean_control + shift,
                          "is_target": is_target})
    order = np.argsort(-np.abs(table["shift"].to_numpy()), kind="stable")
    return table.iloc[order].reset_index(drop=True)


@dataclass
class ShiftPrediction:
    """One predictor's mean expression shift of every gene in a population of cells.

    Attributes
    ----------
    table
        :data:`TABLE_COLUMNS` (``gene, mean_control, shift, ci_low, ci_high, mean_perturbed,
        is_target``), sorted by ``|shift|`` descending.
    method
        The predictor (e.g. :data:`RIDGE_METHOD`).
    spec
        The perturbation in words, with the genes' labels (:meth:`PerturbationSpec.describe`).
    n_cells
        Cells of the population.
    warnings
        Plain sentences for the user (e.g. a target no cell expresses).
    bootstrap
        What the interval resampled: ``"cells"``, ``"donors"`` or ``"none"``.
    """

    table: pd.DataFrame
    method: str
    spec: str
    n_cells: int
    warnings: list[str] = field(default_factory=list)
    bootstrap: str = "none"


# ----------------------------------------------------------------------------- atlas wrapper
@dataclass
class PerturbResult:
    """A predicted perturbation in one population of an atlas.

    ``bootstrap`` is what the interval resampled (``"cells"``, ``"donors"`` or ``"none"``).
    """

    spec: PerturbationSpec
    population: str
    n_cells: int
    table: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    method: str = RIDGE_METHOD
    cell_type: str | None = None
    condition: str | None = None
    subsampled: bool = False
    bootstrap: str = "none"


def describe_population(cell_type: str | None, condition: str | None) -> str:
    """``"'CD14 Mono' cells in 'STIM'"``, ``"all cells in 'STIM'"``, ``"all cells"``…"""
    who = f"'{cell_type}' cells" if cell_type is not None else "all cells"
    return who + (f" in '{condition}'" if condition is not None else "")


