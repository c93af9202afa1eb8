"""sslsv.load(run).embed / score on a run trained for one tiny epoch."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import sslsv
from sslsv.runs import RunError, load_model

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/simclr/fast_resnet34.yml"


@pytest.fixture(scope="module")
def run(tiny_run, tiny_data):
    return tiny_run, tiny_data


def test_embed_paths_arrays_tensors_agree(run):
    run_dir, data = run
    embedder = sslsv.load(run_dir)
    files = sorted((data / "tiny/wav").rglob("*.wav"))[:5]
    from_files = embedder.embed(files)
    assert from_files.shape == (5, embedder.embed_dim) and from_files.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(from_files, axis=1), 1, rtol=1e-5)
    waves = [sf.read(f, dtype="float32")[0] for f in files]
    np.testing.assert_allclose(embedder.embed(waves), from_files, atol=1e-5)
    mixed = embedder.embed([files[0], torch.from_numpy(waves[1]), waves[2]])
    np.testing.assert_allclose(mixed, from_files[:3], atol=1e-5)
    batch = np.stack([waves[0][:8000], waves[1][:8000]])
    np.testing.assert_allclose(embedder.embed(batch), embedder.embed([batch[0], batch[1]]), atol=1e-6)
    # reference: the model run one item at a time
    model, _, _ = load_model(run_dir)
    with torch.no_grad():
        single = torch.nn.functional.normalize(model(torch.from_numpy(waves[3])[None]), dim=1).numpy()
    np.testing.assert_allclose(from_files[3:4], single, atol=1e-5)
    raw = embedder.embed(files[:2], normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1)


def test_score_is_cosine(run):
    run_dir, data = run
    embedder = sslsv.load(run_dir, use_average=False)
    a, b = sorted((data / "tiny/wav").rglob("*.wav"))[:2]
    e = embedder.embed([a, b])
    assert embedder.score(a, b) == pytest.approx(float(e[0] @ e[1]), abs=1e-6)
    assert embedder.score(a, a) == pytest.approx(1.0, abs=1e-5)


def test_errors(run, tmp_path):
    run_dir, _ = run
    embedder = sslsv.load(run_dir)
    with pytest.raises(ValueError, match="item 1: expected a path"):
        embedder.embed(["x.wav", 3])
    with pytest.raises(ValueError, match=r"\(S,\) or \(B, S\)"):
        embedder.embed(np.zeros((1, 2, 3)))
    with pytest.raises(RuntimeError, match="nothing.wav"):
        embedder.embed([tmp_path / "nothing.wav"])
    with pytest.raises(RunError, match="not a run directory"):
        sslsv.load(tmp_path)


def test_one_extraction_for_all_items(run, monkeypatch):
    import sslsv.inference as inference

    run_dir, data = run
    embedder = sslsv.load(run_dir)
    files = sorted((data / "tiny/wav").rglob("*.wav"))[:4]
    calls = []
    real = inference.extract_embeddings

    def counting(model, items, *args, **kwargs):
        calls.append(len(items))
        return real(model, items, *args, **kwargs)

    monkeypatch.setattr(inference, "extract_embeddings", counting)
    wave = sf.read(files[3], dtype="float32")[0]
    out = embedder.embed([*files[:3], wave])
    assert calls == [4] and out.shape == (4, embedder.embed_dim)
