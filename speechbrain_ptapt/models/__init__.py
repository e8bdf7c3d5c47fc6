"""The neural networks (nothing here imports :mod:`speechbrain_ptapt.stages`):
the wav2vec2 backbone (loading from a hub id or a folder, a forward pass with explicit
padding and masks), the SpecAugment-style masks on its CNN features, wav2vec 1.0 in plain
PyTorch, the fine-tuning classifier (:mod:`.classifier`), wav2vec2's pretraining objective
that TAPT continues (:mod:`.pretraining`), P-TAPT phase 1's frame-level emotion model
(:mod:`.frame_emotion`) and phase 2's pseudo-label heads (:mod:`.pseudo_label_heads`).
"""
