"""Tests of the P-TAPT pseudo-label preparation: feature dump, k-means codebooks,
labels aligned to wav2vec2's frames, fingerprints, diagnostics and the cropping
data pipeline.

The phase-1 model is replaced by small frozen stand-ins with the same
``frame_features`` method: a fixed sinusoid filterbank (log magnitudes, so the
features follow the audio and hence the synthetic emotions) or seeded noise
(features unrelated to the audio). Their window lengths differ from wav2vec2's
400 samples, so their frame counts differ from wav2vec2's by a frame: labels
must be padded or trimmed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import IEMOCAP_RECIPES, run_recipe_script
from speechbrain.dataio.dataset import DynamicItemDataset
from torch import nn
from transformers import Wav2Vec2Config

from speechbrain_ptapt.data.iemocap import prepare_iemocap
from speechbrain_ptapt.deploy.inference import load_audio
from speechbrain_ptapt.models.backbone import Wav2Vec2Backbone
from speechbrain_ptapt.pseudo_labels import codebooks as codebooks_module
from speechbrain_ptapt.pseudo_labels import labels as pseudo_labels
from speechbrain_ptapt.pseudo_labels.codebooks import (
    KMEANS_RECORD_FILE,
    fit_codebooks,
    shared_fitting_rows,
)
from speechbrain_ptapt.pseudo_labels.features import FEATURES_FILE, FeatureDump, dump_features
from speechbrain_ptapt.pseudo_labels.kmeans import KMeansSettings, assign_clusters, fit_kmeans
from speechbrain_ptapt.pseudo_labels.labels import (
    IGNORE_INDEX,
    PseudoLabelMismatchError,
    PseudoLabelStore,
    backbone_frame_counts,
    cropped_audio_with_labels,
    prepare_pseudo_labels,
    write_labels,
)
from speechbrain_ptapt.testing.synthetic import make_iemocap

SAMPLE_RATE = 16000  # Hz
HOP = 320  # samples per 20 ms frame
ODD_LENGTHS = (399, 400, 719, 720, 16001, 48007)  # samples
# wav2vec2-base's frames for them: (samples - 400) // 320 + 1, at least 1.
WAV2VEC2_FRAMES = (1, 1, 1, 2, 49, 149)


class StandInFrameModel(nn.Module):
    """A frozen phase-1 stand-in: 20 ms frames over windows of ``window`` samples.

    ``frame_features`` gives ``(samples - window) // 320 + 1`` frames (0 when
    shorter than the window) of ``dim`` features: log magnitudes of a fixed
    sinusoid filterbank (``encode_audio``) or noise seeded by the utterance
    length. ``seed`` changes the filter frequencies, i.e. the weights.
    """

    def __init__(
        self, window: int = 480, dim: int = 12, seed: int = 0, encode_audio: bool = True
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        freqs = torch.logspace(math.log10(100.0), math.log10(4000.0), dim)
        freqs = freqs * (1.0 + 0.05 * torch.rand(dim, generator=generator))
        t = torch.arange(window) / SAMPLE_RATE
        hann = torch.hann_window(window)
        phase = 2 * math.pi * freqs[:, None] * t[None, :]
        weight = torch.cat([torch.sin(phase) * hann, torch.cos(phase) * hann])[:, None, :]
        self.conv = nn.Conv1d(1, 2 * dim, window, stride=HOP, bias=False)
        self.conv.weight.data.copy_(weight)
        self.conv.requires_grad_(False)
        self.window = window
        self.seed = seed
        self.encode_audio = encode_audio
        self.feature_dim = dim
        self.calls = 0

    def frame_features(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, samples), (B,) relative -> (B, frames, dim) features, (B, frames) mask."""
        self.calls += 1
        samples = torch.round(wav_lens * wavs.shape[1]).long()
        frames = ((samples - self.window) // HOP + 1).clamp(min=0)
        if wavs.shape[1] < self.window:
            wavs = nn.functional.pad(wavs, (0, self.window - wavs.shape[1]))
        real, imag = self.conv(wavs[:, None, :]).chunk(2, dim=1)
        features = torch.log(real**2 + imag**2 + 1e-6).transpose(1, 2)
        if not self.encode_audio:
            noise = torch.Generator().manual_seed(self.seed + int(samples[0]))
            features = torch.randn(features.shape, generator=noise)
        mask = torch.arange(features.shape[1])[None, :] < frames[:, None]
        return features, mask


def _write_manifest(path: Path, entries: dict[str, dict]) -> Path:
    path.write_text(json.dumps(entries, indent=2), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def config(tiny_wav2vec2) -> Wav2Vec2Config:
    return Wav2Vec2Config.from_pretrained(str(tiny_wav2vec2))


@pytest.fixture(scope="module")
def backbone(tiny_wav2vec2) -> Wav2Vec2Backbone:
    """The real backbone (tiny weights, wav2vec2-base's frame geometry)."""
    return Wav2Vec2Backbone(str(tiny_wav2vec2)).eval()


@pytest.fixture(scope="module")
def odd_manifest(tmp_path_factory) -> Path:
    """Tones of the odd lengths (samples), two emotions."""
    folder = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(0)
    entries = {}
    for i, length in enumerate(ODD_LENGTHS):
        t = np.arange(length) / SAMPLE_RATE
        wav = 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.01 * rng.standard_normal(length)
        path = folder / f"utt{length}.wav"
        sf.write(path, wav.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        entries[f"utt{length}"] = {
            "wav": str(path),
            "duration": length / SAMPLE_RATE,
            "emo": "ang" if i % 2 else "sad",
        }
    return _write_manifest(folder / "odd.json", entries)


@pytest.fixture(scope="module")
def iemocap_manifests(tmp_path_factory) -> dict[str, Path]:
    """Fold 2 of a synthetic two-session IEMOCAP: train = Session 1, test = Session 2."""
    root = tmp_path_factory.mktemp("iemocap")
    make_iemocap(root, sessions=(1, 2), dialogs_per_session=2, turns_per_dialog=24, junk=False)
    paths = prepare_iemocap(root / "IEMOCAP_full_release", root / "prepared", folds=["2"])
    return paths["2"]


@pytest.fixture(scope="module")
def odd_labels(tmp_path_factory, odd_manifest, config) -> tuple[Path, FeatureDump]:
    """Labels (K = 2, 3) of the odd-length utterances from the 480-sample stand-in."""
    out = tmp_path_factory.mktemp("odd_labels")
    dump = dump_features(StandInFrameModel(window=480), odd_manifest, out / "features")
    codebooks = fit_codebooks(dump, [2, 3], KMeansSettings(iterations=5), out_folder=out)
    write_labels(dump, codebooks, out, config)
    return out, dump


# ----------------------------------------------------------------------------
# Alignment to wav2vec2's frames
# ----------------------------------------------------------------------------


def test_label_frames_equal_the_backbones_frames_for_odd_lengths(odd_labels, config, backbone):
    folder, _ = odd_labels
    store = PseudoLabelStore(folder)
    for length, expected in zip(ODD_LENGTHS, WAV2VEC2_FRAMES):
        labels = store[f"utt{length}"]
        assert labels.dtype == torch.int64
        assert labels.shape == (expected, 2)
        assert int(backbone_frame_counts(config, length)) == expected
        with torch.no_grad():
            _, frame_mask, _ = backbone.extract_features(torch.zeros(1, length), torch.ones(1))
        assert frame_mask.shape[1] == int(frame_mask.sum()) == expected


@pytest.mark.parametrize("window", [320, 480])
def test_labels_are_the_phase1_clusters_padded_or_trimmed_to_wav2vec2_frames(
    tmp_path, odd_manifest, config, window
):
    # window 320: L // 320 frames (one more than wav2vec2 for 719 samples: trimmed);
    # window 480: (L - 480) // 320 + 1 (none for 399/400 samples, one fewer for 720: padded).
    dump = dump_features(StandInFrameModel(window=window), odd_manifest, tmp_path / "features")
    expected_phase1 = [max((n - window) // HOP + 1, 0) for n in ODD_LENGTHS]
    assert dump.lengths.tolist() == expected_phase1
    assert dump.num_samples.tolist() == list(ODD_LENGTHS)
    codebooks = fit_codebooks(dump, [3], KMeansSettings(iterations=5), out_folder=tmp_path)
    write_labels(dump, codebooks, tmp_path, config)
    store = PseudoLabelStore(tmp_path)
    assigned = assign_clusters(dump.features, codebooks[3])
    for i, (length, frames) in enumerate(zip(ODD_LENGTHS, WAV2VEC2_FRAMES)):
        labels = store[f"utt{length}"][:, 0]
        assert labels.shape == (frames,)
        kept = min(frames, expected_phase1[i])
        start = int(dump.offsets[i])
        assert labels[:kept].tolist() == assigned[start : start + kept].tolist()
        assert (labels[kept:] == IGNORE_INDEX).all()
    alignment = json.loads((tmp_path / "diagnostics.json").read_text())["alignment"]
    differences = [p - w for p, w in zip(expected_phase1, WAV2VEC2_FRAMES)]
    assert alignment["padded_utterances"] == sum(d < 0 for d in differences)
    assert alignment["trimmed_utterances"] == sum(d > 0 for d in differences)


def test_crops_carry_the_matching_slice_of_the_whole_utterances_labels(
    odd_labels, odd_manifest, backbone
):
    folder, _ = odd_labels
    store = PseudoLabelStore(folder)
    dataset = DynamicItemDataset.from_json(str(odd_manifest))
    dataset.add_dynamic_item(cropped_audio_with_labels(store, max_seconds=0.5))
    dataset.set_output_keys(["id", "sig", "cluster_labels"])
    crop_samples = 8000
    crop_frames = (crop_samples - 400) // HOP + 1
    torch.manual_seed(0)
    starts_seen = set()
    for index, utt in enumerate(dataset.data_ids):
        entry = json.loads(odd_manifest.read_text())[utt]
        whole = load_audio(entry["wav"])
        whole_labels = store[utt]
        for _ in range(6):
            item = dataset[index]
            sig, labels = item["sig"], item["cluster_labels"]
            if whole.shape[0] <= crop_samples:
                assert torch.equal(sig, whole) and torch.equal(labels, whole_labels)
                continue
            assert sig.shape[0] == crop_samples and labels.shape[0] == crop_frames
            # Windows of the whole utterance starting at every multiple of the hop.
            windows = whole.unfold(0, crop_samples, HOP)
            matches = torch.nonzero((windows == sig).all(dim=1)).flatten()
            assert len(matches), "the crop must start at a multiple of the hop"
            first = int(matches[0])
            assert torch.equal(labels, whole_labels[first : first + crop_frames])
            starts_seen.add((utt, first))
    assert len(starts_seen) > 4, "crops start at random places"
    with torch.no_grad():
        _, frame_mask, _ = backbone.extract_features(torch.zeros(1, crop_samples), torch.ones(1))
    assert frame_mask.shape[1] == int(frame_mask.sum()) == crop_frames


def test_uncropped_audio_gets_the_whole_label_sequence(odd_labels, odd_manifest):
    folder, _ = odd_labels
    store = PseudoLabelStore(folder)
    dataset = DynamicItemDataset.from_json(str(odd_manifest))
    dataset.add_dynamic_item(cropped_audio_with_labels(store, max_seconds=None))
    dataset.set_output_keys(["id", "sig", "cluster_labels"])
    for index, utt in enumerate(dataset.data_ids):
        item = dataset[index]
        assert item["sig"].shape[0] == store.num_samples(utt)
        assert item["cluster_labels"].shape[0] == store.frame_count(item["sig"].shape[0])
        assert torch.equal(item["cluster_labels"], store[utt])


def test_audio_other_than_the_labelled_audio_is_refused(odd_labels, odd_manifest, tmp_path):
    folder, _ = odd_labels
    entries = json.loads(odd_manifest.read_text())
    other = tmp_path / "longer.wav"
    sf.write(other, np.zeros(16001 + HOP, dtype=np.float32), SAMPLE_RATE)
    entries["utt16001"]["wav"] = str(other)
    manifest = _write_manifest(tmp_path / "changed.json", {"utt16001": entries["utt16001"]})
    dataset = DynamicItemDataset.from_json(str(manifest))
    dataset.add_dynamic_item(cropped_audio_with_labels(PseudoLabelStore(folder)))
    dataset.set_output_keys(["sig", "cluster_labels"])
    with pytest.raises(PseudoLabelMismatchError, match="utt16001"):
        dataset[0]


# ----------------------------------------------------------------------------
# Feature dump
# ----------------------------------------------------------------------------


class _RecordingModel(StandInFrameModel):
    """Records the size of the partial dump file whenever a batch starts."""

    def __init__(self, partial: Path, fail_at_call: int | None = None) -> None:
        super().__init__(window=400)
        self.partial = partial
        self.fail_at_call = fail_at_call
        self.sizes: list[int] = []

    def frame_features(self, wavs, wav_lens):
        if self.fail_at_call is not None and self.calls + 1 == self.fail_at_call:
            raise KeyboardInterrupt
        self.sizes.append(self.partial.stat().st_size if self.partial.exists() else 0)
        return super().frame_features(wavs, wav_lens)


def test_features_are_appended_to_disk_as_they_are_computed(tmp_path, odd_manifest):
    folder = tmp_path / "features"
    model = _RecordingModel(folder / "features.npy.partial")
    dump = dump_features(model, odd_manifest, folder)
    frames_before = np.concatenate([[0], np.cumsum(dump.lengths)[:-1]])
    # Before each utterance, the file holds the header and every earlier frame.
    expected = [0] + [128 + int(f) * dump.dim * 4 for f in frames_before[1:]]
    assert model.sizes == expected
    assert isinstance(dump.features, np.memmap)
    assert dump.features.shape == (dump.num_frames, dump.dim)
    assert dump.features.dtype == np.float32
    assert not (folder / "features.npy.partial").exists()
    assert not (folder / "progress.json").exists()
    # The frames are the model's own, utterance by utterance.
    for utt, start, frames in zip(dump.ids, dump.offsets, dump.lengths):
        wav = load_audio(json.loads(odd_manifest.read_text())[utt]["wav"])
        feats, mask = StandInFrameModel(window=400).frame_features(wav[None], torch.ones(1))
        np.testing.assert_allclose(
            dump.features[start : start + frames], feats[0, : int(mask.sum())].numpy(), rtol=1e-6
        )


def test_an_interrupted_dump_is_unfinished_and_resumes(tmp_path, odd_manifest):
    folder = tmp_path / "features"
    interrupted = _RecordingModel(folder / "features.npy.partial", fail_at_call=5)
    with pytest.raises(KeyboardInterrupt):
        dump_features(interrupted, odd_manifest, folder, sync_every=2)
    assert not (folder / "features.npy").exists() and not (folder / "index.json").exists()
    with pytest.raises(FileNotFoundError):
        FeatureDump.load(folder)
    resumed = _RecordingModel(folder / "features.npy.partial")
    dump = dump_features(resumed, odd_manifest, folder)
    assert resumed.calls == len(ODD_LENGTHS) - 4  # the four utterances done are kept
    reference = dump_features(StandInFrameModel(window=400), odd_manifest, tmp_path / "ref")
    assert dump.lengths.tolist() == reference.lengths.tolist()
    np.testing.assert_array_equal(np.asarray(dump.features), np.asarray(reference.features))


# ----------------------------------------------------------------------------
# k-means and diagnostics
# ----------------------------------------------------------------------------


def test_same_seed_gives_the_same_codebooks_and_labels(tmp_path, odd_labels, config):
    _, dump = odd_labels
    runs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        kmeans = KMeansSettings(iterations=10, seed=seed)
        codebooks = fit_codebooks(dump, [3, 5], kmeans, out_folder=tmp_path / name)
        write_labels(dump, codebooks, tmp_path / name, config)
        runs.append((codebooks, np.load(tmp_path / name / "labels.npy")))
        assert np.array_equal(np.load(tmp_path / name / "kmeans_5.npy"), codebooks[5])
    (first, labels_a), (second, labels_b), (third, _) = runs
    for k in (3, 5):
        np.testing.assert_array_equal(first[k], second[k])
    np.testing.assert_array_equal(labels_a, labels_b)
    assert not np.array_equal(first[5], third[5])


def test_diagnostics_show_more_emotion_in_emotional_features_than_in_noise(
    tmp_path, iemocap_manifests, config
):
    results = {}
    for name, model in (
        ("filterbank", StandInFrameModel(window=400, encode_audio=True)),
        ("noise", StandInFrameModel(window=400, encode_audio=False)),
    ):
        folder = prepare_pseudo_labels(
            model,
            iemocap_manifests["train"],
            tmp_path / name,
            n_clusters=[4, 16],
            wav2vec2_config=config,
            kmeans=KMeansSettings(iterations=10),
        )
        results[name] = json.loads((folder / "diagnostics.json").read_text())["clusters"]
        markdown = (folder / "diagnostics.md").read_text()
        assert "| 4 |" in markdown and "| 16 |" in markdown
    for entries in results.values():
        for k, entry in entries.items():
            assert 0.0 <= entry["purity"] <= 1.0 and 0.0 <= entry["nmi"] <= 1.0
            assert entry["purity"] >= entry["majority_emotion_share"] - 1e-9
            assert 1 <= entry["used_clusters"] <= int(k)
            assert 1.0 <= entry["perplexity"] <= int(k) + 1e-6
            assert 0.0 < entry["largest_cluster_share"] <= 1.0
    for k in ("4", "16"):
        assert results["filterbank"][k]["nmi"] > 2 * results["noise"][k]["nmi"]
    assert results["filterbank"]["16"]["purity"] > results["noise"]["16"]["purity"]


def test_only_the_manifests_utterances_are_labelled(tmp_path, iemocap_manifests, config):
    folder = prepare_pseudo_labels(
        StandInFrameModel(),
        iemocap_manifests["train"],
        tmp_path,
        n_clusters=[4],
        wav2vec2_config=config,
        kmeans=KMeansSettings(iterations=3),
    )
    store = PseudoLabelStore(folder)
    train = json.loads(Path(iemocap_manifests["train"]).read_text())
    test = json.loads(Path(iemocap_manifests["test"]).read_text())
    assert sorted(store.ids) == sorted(train)
    assert not set(store.ids) & set(test)
    assert store.n_clusters == [4]
    assert len(store.labels) == sum(
        store.frame_count(load_audio(e["wav"]).shape[0]) for e in train.values()
    )


# ----------------------------------------------------------------------------
# Fingerprints: fresh labels reused, stale ones recomputed
# ----------------------------------------------------------------------------


class _Spy:
    """Wraps a function where the pseudo-label steps look it up, counting calls:
    ``fit_kmeans`` in the codebooks module (step 2), the steps themselves in the
    labels module (which calls them)."""

    def __init__(self, monkeypatch, name: str) -> None:
        self.calls = 0
        module = codebooks_module if name == "fit_kmeans" else pseudo_labels
        self.function = getattr(module, name)
        monkeypatch.setattr(module, name, self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*") if p.is_file()}


def test_fresh_labels_are_reused_and_stale_ones_recomputed(
    tmp_path, odd_manifest, config, monkeypatch
):
    out = tmp_path / "labels"
    settings = {"wav2vec2_config": config, "kmeans": KMeansSettings(iterations=3)}
    model_a = StandInFrameModel(seed=0)
    prepare_pseudo_labels(model_a, odd_manifest, out, n_clusters=[2, 3], **settings)
    before = _mtimes(out)

    dump = _Spy(monkeypatch, "dump_features")
    kmeans = _Spy(monkeypatch, "fit_kmeans")
    labels = _Spy(monkeypatch, "write_labels")
    prepare_pseudo_labels(model_a, odd_manifest, out, n_clusters=[2, 3], **settings)
    assert (dump.calls, kmeans.calls, labels.calls) == (0, 0, 0)
    assert _mtimes(out) == before

    # Another K list: new labels, same features, the K=2 codebook kept.
    prepare_pseudo_labels(model_a, odd_manifest, out, n_clusters=[2, 4], **settings)
    assert (dump.calls, kmeans.calls, labels.calls) == (0, 1, 1)
    assert PseudoLabelStore(out).n_clusters == [2, 4]

    # Other phase-1 weights: new features, every codebook of the old ones deleted.
    assert (out / "kmeans_3.npy").is_file()
    prepare_pseudo_labels(StandInFrameModel(seed=1), odd_manifest, out, [2, 4], **settings)
    assert (dump.calls, kmeans.calls, labels.calls) == (1, 3, 2)
    assert not (out / "kmeans_3.npy").exists()

    # Another manifest: only its utterances, features dumped again.
    entries = json.loads(odd_manifest.read_text())
    del entries["utt400"]
    smaller = _write_manifest(tmp_path / "smaller.json", entries)
    prepare_pseudo_labels(StandInFrameModel(seed=1), smaller, out, [2, 4], **settings)
    assert (dump.calls, kmeans.calls, labels.calls) == (2, 5, 3)
    assert sorted(PseudoLabelStore(out).ids) == sorted(entries)
    assert FeatureDump.load(out / "features").ids == list(entries)

    # The same inputs again: nothing recomputed.
    assert json.loads((out / "fingerprint.json").read_text())["n_clusters"] == [2, 4]
    prepare_pseudo_labels(StandInFrameModel(seed=1), smaller, out, [2, 4], **settings)
    assert (dump.calls, kmeans.calls, labels.calls) == (2, 5, 3)


def test_another_seeding_refits_the_codebooks_on_the_same_features(
    tmp_path, odd_manifest, config, monkeypatch
):
    out = tmp_path / "labels"
    settings = {"wav2vec2_config": config, "n_clusters": [2, 3]}
    model = StandInFrameModel(seed=0)
    prepare_pseudo_labels(model, odd_manifest, out, kmeans=KMeansSettings(iterations=3), **settings)
    assert json.loads((out / "fingerprint.json").read_text())["init"] == "random"

    dump = _Spy(monkeypatch, "dump_features")
    kmeans = _Spy(monkeypatch, "fit_kmeans")
    plus_plus = KMeansSettings(iterations=3, init="k-means++")
    prepare_pseudo_labels(model, odd_manifest, out, kmeans=plus_plus, **settings)
    assert (dump.calls, kmeans.calls) == (0, 2)
    assert json.loads((out / "fingerprint.json").read_text())["init"] == "k-means++"
    prepare_pseudo_labels(model, odd_manifest, out, kmeans=plus_plus, **settings)
    assert (dump.calls, kmeans.calls) == (0, 2)


def test_pseudo_labels_run_on_the_kmeans_device_else_the_runs_device():
    from speechbrain_ptapt.stages.ptapt import pseudo_label_device

    assert pseudo_label_device({"kmeans_device": "cuda:1"}, {"device": "cpu"}) == "cuda:1"
    assert pseudo_label_device({"kmeans_device": None}, {"device": "cuda:2"}) == "cuda:2"
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert pseudo_label_device({"kmeans_device": None}, {}) == expected


def test_a_changed_checkpoint_file_makes_the_labels_stale(
    tmp_path, odd_manifest, config, monkeypatch
):
    final = tmp_path / "final"
    final.mkdir()
    (final / "frame_model.ckpt").write_bytes(b"weights v1")
    (final / "frame_model.json").write_text("{}")
    loaded = []

    def fake_loader(folder: Path, device) -> nn.Module:
        loaded.append((folder, (folder / "frame_model.ckpt").read_bytes()))
        return StandInFrameModel(seed=len(loaded))

    monkeypatch.setattr(pseudo_labels, "_load_frame_model", fake_loader)
    settings = {
        "n_clusters": [2],
        "wav2vec2_config": config,
        "kmeans": KMeansSettings(iterations=3),
    }
    out = tmp_path / "labels"
    prepare_pseudo_labels(final, odd_manifest, out, **settings)
    prepare_pseudo_labels(final, odd_manifest, out, **settings)
    assert loaded == [(final, b"weights v1")]  # fresh labels: the model is not even loaded
    (final / "frame_model.ckpt").write_bytes(b"weights v2")
    prepare_pseudo_labels(final, odd_manifest, out, **settings)
    assert [content for _, content in loaded] == [b"weights v1", b"weights v2"]
    features = FeatureDump.load(out / "features")
    assert features.fingerprint == json.loads((out / "fingerprint.json").read_text())["features"]


def test_recipe_script_prepares_a_folds_labels(
    tmp_path, odd_manifest, tiny_wav2vec2, monkeypatch, capsys
):
    final = tmp_path / "final"
    final.mkdir()
    (final / "frame_model.ckpt").write_bytes(b"weights")
    (final / "frame_model.json").write_text("{}")
    monkeypatch.setattr(
        pseudo_labels, "_load_frame_model", lambda folder, device: StandInFrameModel()
    )
    out = tmp_path / "pseudo_labels"
    args = ["--frame_model", str(final), "--manifest", str(odd_manifest)]
    args += ["--wav2vec2_hub", str(tiny_wav2vec2), "--out", str(out)]
    args += ["--n_clusters", "2", "3", "--seed", "1", "--n_iter", "3"]
    run_recipe_script(IEMOCAP_RECIPES / "prepare_pseudo_labels.py", args, monkeypatch)
    assert capsys.readouterr().out.strip().endswith(str(out))
    store = PseudoLabelStore(out)
    assert store.n_clusters == [2, 3]
    assert sorted(store.ids) == sorted(json.loads(odd_manifest.read_text()))
    fingerprint = json.loads((out / "fingerprint.json").read_text())
    assert fingerprint["seed"] == 1
    assert fingerprint["fit_set"] == "shared"  # the authors' k-means fitting set by default
    assert fingerprint["frame_geometry"]["hop_samples"] == HOP
    assert fingerprint["frame_geometry"]["receptive_field_samples"] == 400
    assert {"kmeans_2.npy", "kmeans_3.npy", "diagnostics.md"} <= {p.name for p in out.iterdir()}


# ----------------------------------------------------------------------------
# The k-means fitting set
# ----------------------------------------------------------------------------


def _synthetic_dump(folder: Path, lengths: list[int], dim: int = 4) -> FeatureDump:
    """A finished dump of random features: utterance ``u`` has ``lengths[u]`` frames."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.save(folder / FEATURES_FILE, rng.standard_normal((sum(lengths), dim)))
    ids = [f"utt{i}" for i in range(len(lengths))]
    return FeatureDump(
        folder=folder,
        ids=ids,
        lengths=np.asarray(lengths, dtype=np.int64),
        num_samples=np.asarray(lengths, dtype=np.int64) * HOP,
        emotions=["neu"] * len(ids),
        dim=dim,
        fingerprint={"synthetic": len(ids)},
    )


class _FitSpy:
    """Wraps ``fit_kmeans`` in the codebooks module, recording the rows each K was fitted on."""

    def __init__(self, monkeypatch) -> None:
        self.rows: dict[int, np.ndarray | None] = {}
        self.function = codebooks_module.fit_kmeans
        monkeypatch.setattr(codebooks_module, "fit_kmeans", self)

    def __call__(self, features, n_clusters, **kwargs):
        rows = kwargs.get("rows")
        self.rows[n_clusters] = None if rows is None else np.asarray(rows)
        return self.function(features, n_clusters, **kwargs)


# 40 utterances of 100..294 frames: 7880 frames.
UTTERANCE_FRAMES = [100 + 5 * i for i in range(40)]


def test_every_k_is_fitted_on_all_frames_when_they_fit_the_shared_set(tmp_path):
    dump = _synthetic_dump(tmp_path / "features", UTTERANCE_FRAMES)
    assert 1000 * 2 < dump.num_frames <= 1000 * 8
    codebooks = fit_codebooks(
        dump, [2, 8], KMeansSettings(iterations=4, seed=3), out_folder=tmp_path
    )
    # 1000 * max(K) frames hold every frame: each K is the k-means of all of them
    # (per-K sampling would fit K = 2 on 2000 of the 7880).
    for k in (2, 8):
        whole = fit_kmeans(dump.features, k, n_iter=4, seed=3)
        assert np.array_equal(codebooks[k], whole.centroids), k
    record = json.loads((tmp_path / KMEANS_RECORD_FILE).read_text())
    assert [record[k]["fit_frames"] for k in ("2", "8")] == [dump.num_frames] * 2
    assert record["2"]["fingerprint"]["fit_set"] == "shared"
    assert record["2"]["fingerprint"]["fit_frames"] == "all"


def test_a_capped_shared_set_is_one_set_of_whole_utterances_for_every_k(tmp_path, monkeypatch):
    dump = _synthetic_dump(tmp_path / "features", UTTERANCE_FRAMES)
    spy = _FitSpy(monkeypatch)
    per_centroid = 300  # 300 * max(K) = 2400 of the 7880 frames
    kmeans = KMeansSettings(iterations=4, points_per_cluster=per_centroid, seed=3)
    codebooks = fit_codebooks(dump, [2, 8], kmeans, out_folder=tmp_path)
    shared = spy.rows[2]
    assert shared is not None and np.array_equal(spy.rows[8], shared)
    assert 2400 - max(UTTERANCE_FRAMES) < shared.size <= 2400
    # Whole utterances: each one is in the set with all its frames or not at all.
    taken = np.isin(np.arange(dump.num_frames), shared)
    per_utterance = np.split(taken, np.cumsum(dump.lengths)[:-1])
    assert all(part.all() or not part.any() for part in per_utterance)
    for k in (2, 8):
        subset = fit_kmeans(np.asarray(dump.features)[shared], k, n_iter=4, seed=3)
        assert np.array_equal(codebooks[k], subset.centroids), k
    # Seeded: the same seed draws the same utterances, another seed others.
    assert np.array_equal(shared_fitting_rows(dump.lengths, 2400, 3), shared)
    other = shared_fitting_rows(dump.lengths, 2400, 4)
    assert not np.array_equal(other, shared)
    # Every frame fits: no subset at all.
    assert shared_fitting_rows(dump.lengths, dump.num_frames, 3) is None


def test_per_k_fit_set_samples_each_k_on_its_own(tmp_path, monkeypatch):
    dump = _synthetic_dump(tmp_path / "features", UTTERANCE_FRAMES)
    spy = _FitSpy(monkeypatch)
    kmeans = KMeansSettings(iterations=4, seed=3, fit_set="per_k")
    codebooks = fit_codebooks(dump, [2, 8], kmeans, out_folder=tmp_path)
    assert spy.rows == {2: None, 8: None}
    sampled = fit_kmeans(dump.features, 2, n_iter=4, seed=3, max_points=2000)
    assert np.array_equal(codebooks[2], sampled.centroids)
    record = json.loads((tmp_path / KMEANS_RECORD_FILE).read_text())
    assert [record[k]["fit_frames"] for k in ("2", "8")] == [2000, dump.num_frames]
    assert record["2"]["fingerprint"]["fit_set"] == "per_k"
    assert record["2"]["fingerprint"]["fit_frames"] is None
    with pytest.raises(ValueError, match="fit_set"):
        KMeansSettings(fit_set="each")


def test_changing_the_fit_set_refits_the_codebooks_and_relabels(
    tmp_path, odd_manifest, config, monkeypatch
):
    out = tmp_path / "labels"
    settings = {"wav2vec2_config": config, "n_clusters": [2, 3]}
    # 70 frames per centroid: per K 140 and all 200 frames, shared all 200.
    shared = KMeansSettings(iterations=3, points_per_cluster=70)
    per_k = KMeansSettings(iterations=3, points_per_cluster=70, fit_set="per_k")
    model = StandInFrameModel(seed=0)
    prepare_pseudo_labels(model, odd_manifest, out, kmeans=shared, **settings)
    assert json.loads((out / "fingerprint.json").read_text())["fit_set"] == "shared"

    dump = _Spy(monkeypatch, "dump_features")
    kmeans = _Spy(monkeypatch, "fit_kmeans")
    labels = _Spy(monkeypatch, "write_labels")
    prepare_pseudo_labels(model, odd_manifest, out, kmeans=per_k, **settings)
    assert (dump.calls, kmeans.calls, labels.calls) == (0, 2, 1)
    assert json.loads((out / "fingerprint.json").read_text())["fit_set"] == "per_k"
    prepare_pseudo_labels(model, odd_manifest, out, kmeans=per_k, **settings)
    assert (dump.calls, kmeans.calls, labels.calls) == (0, 2, 1)
    prepare_pseudo_labels(model, odd_manifest, out, kmeans=shared, **settings)
    assert (dump.calls, kmeans.calls, labels.calls) == (0, 4, 2)
