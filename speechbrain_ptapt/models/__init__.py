"""The neural networks: the wav2vec2 backbone (loading from a hub id or a folder,
a forward pass with explicit padding and masks), the SpecAugment-style masks on
its CNN features, and wav2vec 1.0 in plain PyTorch (P-TAPT's frame encoder).
"""
