"""The training stages, each a SpeechBrain ``Brain`` with its stage run (skip, resume,
cached results): V-FT fine-tuning (the last stage of every method), TAPT, P-TAPT phase 1
(the frame-level emotion model) and phase 2, and the step-counted training loop they
share. The models they train are in :mod:`speechbrain_ptapt.models`.
"""
