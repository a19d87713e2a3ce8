"""The atlas bundle, the contract between engine and app: read and validate (:mod:`.atlas`), the manifest
(:mod:`.manifest`, a typed schema built on :mod:`.record`), group summaries (:mod:`.summaries`) and cell
selection by role (:mod:`.select`).
"""
