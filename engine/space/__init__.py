"""Array-level geometry: the FAISS index, the 2-D layout, clustering, neighbours, the raster image of all cells, selections.

Modules take arrays (embeddings, coordinates, labels), never a bundle.
"""
