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
        # torchaudio's compiled extension loads only with the torch build it was
        # made for, yet its wheels declare a loose `torch>=...`: torchaudio 2.11.1
        # declares torch>=2.11 but fails to import with torch 2.11.0 (undefined
        # symbol), so a range such as `torchaudio==2.11.*` breaks every fresh
        # install. Pin one exact pair measured to load together; it resolves the
        # same with or without a cap on torch. Moving to another pair means
        # re-running the suite and updating requirements/constraints.txt.
        "torch==2.11.0",
        "torchaudio==2.11.0",
        # The ranges below span the releases the test suite was run with
        # (requirements/constraints.txt pins the exact set).
        "speechbrain>=1.1.2,<1.2",
        "transformers>=5.24,<5.25",
        "scikit-learn>=1.3",
        "scipy>=1.15",  # the rng argument of scipy.stats.bootstrap and permutation_test
        "hyperpyyaml>=1.2",
        "ruamel.yaml>=0.17",
        "pyyaml>=6.0",
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
