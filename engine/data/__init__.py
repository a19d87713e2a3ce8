"""Data in: readers (h5ad, SOMA, census, object storage), schema harmonisation, gene identifiers,
normalisation, row blocks, the expression store and streaming loaders; :mod:`.synth` generates atlases.
"""
