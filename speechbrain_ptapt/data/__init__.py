"""Corpora and data pipelines: IEMOCAP and SAVEE preparation (manifests per fold),
the helpers they share, reproducible training subsets, and the SpeechBrain
dynamic items, class priors and duration batches every stage reads.
"""
