"""Extraction: shard files, resumption after a lost shard, full-length vs crops, refusal to mix extractions."""
from pathlib import Path

import numpy as np
import pytest
import torch

from sslsv.config import ConfigError
from sslsv.data.manifest import read_manifest
import sslsv.evaluation.embeddings as embeddings
from sslsv.pseudo_labels.extract import ExtractionConfig, extract_representations


class Energy(torch.nn.Module):
    """A deterministic 'model': log energy and mean absolute value of the waveform, (B, S) -> (B, 2)."""

    def forward(self, x):
        return torch.stack([x.pow(2).mean(1).log(), x.abs().mean(1)], dim=1)


def test_shards_resume_and_match(tiny_data, tmp_path, monkeypatch):
    manifest = read_manifest(Path(tiny_data) / "tiny/train.csv")
    cfg = ExtractionConfig(shard_size=7, batch_seconds=5, num_workers=0)
    out = tmp_path / "emb"
    x = extract_representations(Energy(), manifest, tiny_data, out, cfg, 16000, torch.device("cpu"), progress=False)
    assert x.shape == (24, 2) and x.dtype == np.float32
    assert sorted(p.name for p in out.glob("shard_*.npy")) == [f"shard_{i:05d}.npy" for i in range(4)]
    reference = np.array(x)

    # Simulated kill during shard 2: it was never written, and the merged file not yet made.
    (out / "shard_00002.npy").unlink()
    (out / "embeddings.npy").unlink()
    computed = []
    real = embeddings.extract_embeddings

    def counting(model, paths, *args, **kwargs):
        computed.append(len(paths))
        return real(model, paths, *args, **kwargs)

    monkeypatch.setattr(embeddings, "extract_embeddings", counting)
    again = extract_representations(Energy(), manifest, tiny_data, out, cfg, 16000, torch.device("cpu"), progress=False)
    assert computed == [7]  # only the missing shard
    np.testing.assert_allclose(np.array(again), reference, rtol=1e-6)


def test_crops_and_mixing_is_refused(tiny_data, tmp_path):
    manifest = read_manifest(Path(tiny_data) / "tiny/train.csv")
    cfg = ExtractionConfig(shard_size=10, crop_seconds=0.5, crop_batch_size=4, num_workers=0)
    a = extract_representations(Energy(), manifest, tiny_data, tmp_path / "a", cfg, 16000, torch.device("cpu"), False)
    b = extract_representations(Energy(), manifest, tiny_data, tmp_path / "b", cfg, 16000, torch.device("cpu"), False)
    assert np.array_equal(np.array(a), np.array(b))  # deterministic crops
    with pytest.raises(ConfigError, match="another extraction"):
        extract_representations(Energy(), manifest, tiny_data, tmp_path / "a", ExtractionConfig(shard_size=5),
                                16000, torch.device("cpu"), False)
