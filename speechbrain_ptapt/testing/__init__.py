"""Test and demo fixtures: synthetic emotional speech in the IEMOCAP and SAVEE
layouts and a tiny random wav2vec2 in transformers format.
"""
