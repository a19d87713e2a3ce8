"""Healthy vs disease: conditions and cell-level DE (:mod:`.conditions`), composition, donor pseudobulk DE,
embedding shift and dot plots.
"""
