"""Virtual Cell Explorer engine: atlases, embeddings, neighbours, comparison, perturbation.

The engine is a plain library (it never imports streamlit). Public verbs take data in and
return results; the command line (``vcell``) and the dashboard (``app/``) are thin callers.
"""

__version__ = "0.1.0"
