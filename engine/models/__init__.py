"""Models: pure ``nn.Module`` encoders and decoders, masking and augmentations, the self-supervised methods,
the training plan, PCA, and checkpoints (save, load, import).
"""
