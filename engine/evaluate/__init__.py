"""Embedding quality: metrics (zero-shot kNN, linear probe, donor splits), baselines (PCA, HVG),
reconstruction, fine-tuning, transfer, and the suite run on a bundle (:mod:`.suite`).
"""
