"""Virtual Cell Explorer engine: atlases, embeddings, neighbours, comparison, perturbation.

The engine is a plain library (it never imports streamlit). Public verbs take data in and
return results; the command line (``vcell``) and the dashboard (``app/``) are thin callers.
They are named here and imported on first use (PEP 562), so ``import engine.errors`` stays
light::

    import engine

    atlas = engine.read_atlas("kang.vcell")
    result = engine.compare_conditions(atlas, "ctrl", "stim")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute), in the order data flows (DESIGN.md, "One picture"). A name is never
# that of a subpackage (``annotate``, ``perturb``): importing engine.perturb.* sets ``engine.perturb`` to
# the package, so a verb of that name would be replaced, or would break ``import engine.perturb.x as y``.
_PUBLIC: dict[str, tuple[str, str]] = {
    # read and generate
    "read_source": ("engine.data.read", "read_source"),
    "census_query": ("engine.data.soma", "census_query"),
    "write_census": ("engine.data.soma", "write_census"),
    "generate_atlas": ("engine.data.synth.generate", "generate_atlas"),
    # build a bundle, train and apply models
    "BuildOptions": ("engine.build.prepare", "BuildOptions"),
    "build_atlas": ("engine.build.pipeline", "build_atlas"),
    "pretrain": ("engine.build.pretrain", "pretrain"),
    "embed": ("engine.build.embed", "add_embedding"),
    "embed_atlas": ("engine.build.embed", "embed_atlas"),
    "load_model": ("engine.models.serialize", "load_model"),
    "import_ssl_checkpoint": ("engine.models.import_ssl", "import_ssl_checkpoint"),
    "build_index": ("engine.space.index", "build_index"),
    # read a bundle
    "read_atlas": ("engine.bundle.atlas", "read_atlas"),
    "validate_atlas": ("engine.bundle.atlas", "validate_atlas"),
    "find_neighbours": ("engine.space.neighbours", "find_neighbours"),
    # healthy vs disease
    "compare_conditions": ("engine.compare.conditions", "compare_conditions"),
    "composition": ("engine.compare.composition", "composition"),
    "pseudobulk_de": ("engine.compare.pseudobulk", "pseudobulk_de"),
    # labels
    "annotate_bundle": ("engine.annotate.apply", "annotate_bundle"),
    "transfer_labels": ("engine.annotate.label_transfer", "transfer_labels"),
    # model quality
    "evaluate_bundle": ("engine.evaluate.suite", "evaluate_bundle"),
    # the virtual cell
    "predict_perturbation": ("engine.perturb.predict", "perturb"),
    "holdout_condition_response": ("engine.perturb.evaluation", "holdout_condition_response"),
    # beyond one process
    "embed_shards": ("engine.scale.shards", "embed_shards"),
    "merge_shards": ("engine.scale.merge", "merge_shards"),
}

__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    """Import a public verb on first access and keep it as a module attribute."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'engine' has no attribute '{name}'")
    module, attribute = _PUBLIC[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
