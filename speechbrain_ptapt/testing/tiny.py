"""A tiny, randomly initialised wav2vec2 written in transformers format.

It has wav2vec2-base's CNN geometry (strides 5,2,2,2,2,2,2, kernels
10,3,3,3,3,2,2: 400-sample receptive field, 320-sample hop, 20 ms frames at
16 kHz) with very few channels and layers, and is saved exactly as a hub
model is (config.json, model.safetensors, preprocessor_config.json), so it
is loaded through the same code path as ``facebook/wav2vec2-base``. Tests
and the demo use it where no network is available.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForPreTraining


def tiny_wav2vec2_config(hidden_size: int = 32, num_layers: int = 2) -> Wav2Vec2Config:
    """A wav2vec2 config with base's frame geometry and a few thousand parameters."""
    conv_dim = 32
    return Wav2Vec2Config(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        conv_dim=(conv_dim,) * 7,
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        feat_extract_norm="group",
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        num_codevector_groups=2,
        num_codevectors_per_group=16,
        codevector_dim=16,
        proj_codevector_dim=16,
        num_negatives=10,
        mask_time_prob=0.05,
        mask_time_length=10,
        mask_time_min_masks=2,
        layerdrop=0.0,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        do_stable_layer_norm=False,
    )


def make_tiny_wav2vec2(folder: str | Path, seed: int = 0, **config_kwargs) -> Path:
    """Writes a tiny random wav2vec2 (with its quantizer) to ``folder``.

    Arguments
    ---------
    folder : str or Path
        Output folder; created if needed.
    seed : int
        Seed of the random initialisation (same seed, same weights).
    **config_kwargs
        Passed to :func:`tiny_wav2vec2_config`.

    Returns
    -------
    Path
        The folder, loadable with ``Wav2Vec2ForPreTraining.from_pretrained``
        and as ``wav2vec2_hub`` in every recipe.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Wav2Vec2ForPreTraining(tiny_wav2vec2_config(**config_kwargs))
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(str(folder))
    Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=16000,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
    ).save_pretrained(str(folder))
    return folder


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m speechbrain_ptapt.testing.tiny OUTPUT_FOLDER``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", help="where to write the model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(make_tiny_wav2vec2(args.folder, seed=args.seed))


if __name__ == "__main__":
    main()
