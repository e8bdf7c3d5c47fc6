"""Using a trained model: the self-contained inference interface (copied verbatim
into exported models; it imports nothing of this package), the Hub-ready export,
its model card, and classification of audio files from the command line.
"""
