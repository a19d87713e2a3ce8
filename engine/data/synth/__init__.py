"""The generator of synthetic atlases: gene-regulatory network (:mod:`.grn`), the model of cell types,
conditions and donors (:mod:`.model`), sampling (:mod:`.sample`), ground truth (:mod:`.truth`) and the writer
(:mod:`.generate`).
"""
