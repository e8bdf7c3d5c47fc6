"""P-TAPT's pseudo-labels: frame features of the phase-1 model, k-means codebooks,
one label sequence per K per utterance aligned to wav2vec2's frames, the store
that serves them to phase 2, and the deterministic chunked k-means itself.
"""
