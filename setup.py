"""Installation script for speechbrain-ptapt."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent

setup(
    name="speechbrain-ptapt",
    version="0.1.0",
    description=(
        "SpeechBrain plugin for wav2vec 2.0 fine-tuning strategies for speech "
        "emotion recognition: V-FT, TAPT and P-TAPT (Chen & Rudnicky, 2022)."
    ),
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["speechbrain_ptapt", "speechbrain_ptapt.*"]),
    python_requires=">=3.10",
    install_requires=[
        # torchaudio's compiled extension only loads with the torch release it
        # was built against: keep the two pinned together.
        "torch==2.11.*",
        "torchaudio==2.11.*",
        "speechbrain>=1.0,<1.2",
        "transformers>=4.40",
        "scikit-learn>=1.3",
        "hyperpyyaml>=1.2",
        "numpy>=1.24",
        "soundfile>=0.12",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": ["pytest>=7", "ruff>=0.5"],
        "report": ["matplotlib>=3.6"],
        "hub": ["huggingface_hub>=0.20"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
