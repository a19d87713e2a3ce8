"""The build pipeline: input -> bundle (:mod:`.pipeline`), its in-memory (:mod:`.prepare`) and streaming
(:mod:`.stream`) first halves, resume checkpoints (:mod:`.checkpoint`), and learned embeddings added to a bundle
(:mod:`.embed`).
"""
