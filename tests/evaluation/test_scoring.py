import time

import numpy as np
import pytest
import torch

from sslsv.evaluation.scoring import ScoreFile, cosine_scores, index_trials, read_scores, write_scores


def test_index_trials_maps_rows_and_names_missing():
    keys = ["a/1.wav", "b/2.wav", "c/3.wav"]
    enroll, test = index_trials(["a/1.wav", "c/3.wav"], ["b/2.wav", "a/1.wav"], keys)
    assert enroll.dtype == np.int64 and test.dtype == np.int64
    assert enroll.tolist() == [0, 2] and test.tolist() == [1, 0]
    with pytest.raises(KeyError, match="x/9.wav"):
        index_trials(["a/1.wav", "x/9.wav"], ["b/2.wav", "a/1.wav"], keys)
    with pytest.raises(KeyError, match="2 trial utterance"):
        index_trials(["a/1.wav", "a/1.wav"], ["y/1.wav", "z/2.wav"], keys)
    with pytest.raises(ValueError):
        index_trials(["a/1.wav"], [], keys)


def test_cosine_scores_match_direct_formula_across_chunks():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(50, 16, generator=g) * torch.rand(50, 1, generator=g) * 10
    rng = np.random.default_rng(0)
    enroll, test = rng.integers(0, 50, 1000), rng.integers(0, 50, 1000)
    expected = torch.nn.functional.cosine_similarity(emb[enroll], emb[test], dim=1).numpy()
    for batch in (7, 1000, 1_000_000):
        scores = cosine_scores(emb, enroll, test, batch=batch)
        assert scores.dtype == np.float32 and scores.shape == (1000,)
        np.testing.assert_allclose(scores, expected, atol=1e-6)
    np.testing.assert_allclose(cosine_scores(emb.double().numpy(), enroll, test), expected, atol=1e-6)
    assert cosine_scores(emb, np.zeros(0, np.int64), np.zeros(0, np.int64)).shape == (0,)
    with pytest.raises(IndexError):
        cosine_scores(emb, [0, 50], [1, 2])
    with pytest.raises(ValueError):
        cosine_scores(emb, [0, 1], [1])


def test_cosine_scores_large_is_fast():
    emb = torch.randn(5000, 256)
    rng = np.random.default_rng(1)
    enroll, test = rng.integers(0, 5000, 580_000), rng.integers(0, 5000, 580_000)
    start = time.perf_counter()
    scores = cosine_scores(emb, enroll, test, batch=200_000)
    assert time.perf_counter() - start < 20
    i = 12345
    ref = torch.nn.functional.cosine_similarity(emb[enroll[i]], emb[test[i]], dim=0).item()
    assert scores[i] == pytest.approx(ref, abs=1e-5)


def test_write_read_scores_roundtrip(tmp_path):
    enroll = ["id1/a/1.wav", "nan", "id3/c/3.wav"]
    test = ["id2/b/2.wav", "NA", "id1/a/1.wav"]
    scores = np.array([0.1234567, -0.5, 1.0], dtype=np.float32)
    labels = np.array([1, 0, 1])
    path = tmp_path / "scores" / "vox.score"
    write_scores(path, enroll, test, scores, labels)
    lines = path.read_text().splitlines()
    assert lines[0] == "id1/a/1.wav id2/b/2.wav 0.123457 1"
    assert lines[1] == "nan NA -0.500000 0"
    back = read_scores(path)
    assert isinstance(back, ScoreFile)
    assert back.enroll == enroll and back.test == test
    np.testing.assert_allclose(back.scores, scores, atol=1e-6)
    assert back.labels.tolist() == [1, 0, 1]
    write_scores(path, ["dir with space/a.wav"], ["c"], [0.5], [1])  # tab-separated, read back as it was
    assert path.read_text() == "dir with space/a.wav\tc\t0.500000\t1\n"
    assert read_scores(path).enroll == ["dir with space/a.wav"]
    with pytest.raises(ValueError, match="tabs or line breaks"):
        write_scores(path, ["a\tb"], ["c"], [0.0], [1])
    with pytest.raises(ValueError):
        write_scores(path, ["a"], ["c", "d"], [0.0], [1])
