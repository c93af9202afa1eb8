"""The embedding cache (sslsv.evaluation.embeddings.embedding_cache): hits, invalidation by every key part (weights,
extraction settings, audio), atomic parts, and a second evaluate that runs no model at all."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sslsv.config import load_config, save_config
from sslsv.encoders.base import build_speaker_model
from sslsv.evaluation import embeddings as emb
from sslsv.evaluation.embeddings import Crops, EmbeddingCache, embedding_cache, extract_embeddings
from sslsv.evaluation.evaluate import evaluate_run
from sslsv.runs import RunLayout, atomic_save
from tests.tiny_corpus import SR, make_tiny_corpus, tiny_overrides

ROOT = Path(__file__).resolve().parents[2]


class Stats(torch.nn.Module):
    """(B, S) -> (B, 4): a model with weights, cheap enough to run in every test."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(4))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        frames = x[:, : x.shape[1] // 4 * 4].reshape(len(x), -1, 4)
        return frames.abs().mean(1) * self.scale


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = make_tiny_corpus(tmp_path_factory.mktemp("cache_data"), speakers=2, sessions=1, utterances=3)
    return sorted(str(p) for p in (root / "tiny" / "wav").rglob("*.wav"))


def run(model, paths, folder, **kwargs):
    with embedding_cache(folder):
        return extract_embeddings(model, paths, SR, "cpu", progress=False, num_workers=0, **kwargs)


def test_hit_miss_and_each_key_part(files, tmp_path, capsys):
    model, folder = Stats(), tmp_path / "cache"
    first = run(model, files, folder)
    assert "0 of 6 files cached (hit), 6 embedded (miss)" in capsys.readouterr().out
    calls = model.calls
    again = run(model, files, folder)
    assert model.calls == calls  # every file from the cache: no model call
    assert "6 of 6 files cached (hit), 0 embedded (miss)" in capsys.readouterr().out
    assert torch.equal(first, again)
    # the audio: touching one file (new mtime) re-embeds that file only
    os.utime(files[2], ns=(os.stat(files[2]).st_atime_ns, os.stat(files[2]).st_mtime_ns + 10 ** 9))
    run(model, files, folder)
    assert "5 of 6 files cached (hit), 1 embedded (miss)" in capsys.readouterr().out
    # the weights: any change of a tensor invalidates every entry
    with torch.no_grad():
        model.scale.mul_(2)
    doubled = run(model, files, folder)
    assert "0 of 6 files cached" in capsys.readouterr().out
    torch.testing.assert_close(doubled, 2 * first)
    # the extraction settings: sample rate, max_trim and crops are part of the key
    with embedding_cache(folder):
        extract_embeddings(model, files, 8000, "cpu", progress=False, num_workers=0)
    assert "0 of 6 files cached" in capsys.readouterr().out
    run(model, files, folder, max_trim=0.0)
    assert "0 of 6 files cached" in capsys.readouterr().out
    run(model, files, folder, crops=Crops(0.5, 2))
    assert "0 of 6 files cached" in capsys.readouterr().out
    run(model, files, folder, crops=Crops(0.5, 2))
    assert "6 of 6 files cached" in capsys.readouterr().out
    # without a scope (or with None: --no-cache) nothing is read or written
    calls = model.calls
    run(model, files, None)
    extract_embeddings(model, files, SR, "cpu", progress=False, num_workers=0)
    assert model.calls > calls and "embedding cache" not in capsys.readouterr().out


def test_seeded_crops_keep_their_rows_and_parts_merge(files, tmp_path, capsys, monkeypatch):
    model, folder = Stats(), tmp_path / "cache"
    crops = Crops(0.3, 1, seed=7)
    plain = extract_embeddings(model, files, SR, "cpu", progress=False, num_workers=0, crops=crops)
    run(model, files[:3], folder, crops=crops)  # rows 0-2 cached, then all: rows 3-5 drawn with their own seeds
    mixed = run(model, files, folder, crops=crops)
    assert "3 of 6 files cached" in capsys.readouterr().out
    assert torch.equal(plain, mixed)
    monkeypatch.setattr(emb, "CACHE_MAX_PARTS", 2)
    for i in range(3):  # one new part each; the third merges them into one
        run(model, [files[i]], folder)
    cache = EmbeddingCache.for_model(folder, model, SR, None, 0.01)
    assert len(cache.parts()) == 1
    assert not list(cache.folder.glob("*.tmp"))  # parts are written through atomic_save
    run(model, files[:3], folder)
    assert "3 of 3 files cached" in capsys.readouterr().out


def write_run(data_root: Path, run_dir: Path, seed: int = 0) -> Path:
    """A run directory with the tiny config and random (untrained) weights: enough for evaluation."""
    config = load_config(ROOT / "configs/simclr/fast_resnet34.yml", tiny_overrides(data_root, run_dir))
    run_dir.mkdir(parents=True)
    save_config(config, RunLayout(run_dir).config)
    torch.manual_seed(seed)
    atomic_save(build_speaker_model(config.encoder, config.features).state_dict(), RunLayout(run_dir).model)
    return run_dir


def test_second_evaluate_runs_no_model_and_new_weights_invalidate(tmp_path, monkeypatch, capsys):
    data = make_tiny_corpus(tmp_path / "data", speakers=2, sessions=2, utterances=2)
    run_dir = write_run(data, tmp_path / "run")
    batches = []
    original = emb._embed_batches
    monkeypatch.setattr(emb, "_embed_batches", lambda *a, **k: batches.append(1) or original(*a, **k))
    first = evaluate_run(run_dir, ["tiny/trials.txt"], progress=False, plots=False)
    assert batches and "0 of 8 files cached" in capsys.readouterr().out
    batches.clear()
    second = evaluate_run(run_dir, ["tiny/trials.txt"], progress=False, plots=False)
    assert not batches and "8 of 8 files cached" in capsys.readouterr().out
    assert second["test/tiny_trials"]["eer"] == first["test/tiny_trials"]["eer"]
    third = evaluate_run(run_dir, ["tiny/trials.txt"], progress=False, plots=False, cache=False)  # --no-cache
    assert batches and "embedding cache" not in capsys.readouterr().out
    assert third["test/tiny_trials"]["eer"] == first["test/tiny_trials"]["eer"]
    # other weights in model.pt: a new key, everything embedded again
    other = write_run(data, tmp_path / "other", seed=1)
    os.replace(RunLayout(other).model, RunLayout(run_dir).model)
    batches.clear()
    evaluate_run(run_dir, ["tiny/trials.txt"], progress=False, plots=False)
    assert batches and "0 of 8 files cached" in capsys.readouterr().out
    assert len(list(RunLayout(run_dir).embedding_cache.iterdir())) == 2  # one folder per weights
    assert np.isfinite(first["test/tiny_trials"]["eer"])
