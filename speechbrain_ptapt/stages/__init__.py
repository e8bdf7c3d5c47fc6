"""The training stages, each a SpeechBrain ``Brain``: V-FT fine-tuning (the last
stage of every method), TAPT, P-TAPT phase 1 (the frame-level emotion model) and
phase 2, and the step-counted training loop they share.
"""
