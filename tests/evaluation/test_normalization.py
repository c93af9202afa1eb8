"""Score normalisation against direct per-trial numpy computations."""
import numpy as np
import pytest
import torch

from sslsv.evaluation.normalization import build_cohort, cohort_statistics, normalize_scores


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _reference(emb, enroll, test, cohort, method, top_n):
    """Per trial, in float64: each side's cohort scores, top_n kept, then the formula."""
    emb, cohort = _unit(emb.astype(np.float64)), _unit(cohort.astype(np.float64))
    out = []
    for i, j in zip(enroll, test):
        s = emb[i] @ emb[j]
        stats = []
        for u in (i, j):
            c = cohort @ emb[u]
            if top_n is not None:
                c = np.sort(c)[::-1][:top_n]
            stats.append((c.mean(), c.std()))
        z = (s - stats[0][0]) / stats[0][1]
        t = (s - stats[1][0]) / stats[1][1]
        out.append({"z": z, "t": t, "s": 0.5 * (z + t), "as": 0.5 * (z + t)}[method])
    return np.array(out)


@pytest.mark.parametrize("method,top_n", [("z", None), ("t", None), ("s", None), ("as", 5), ("as", 37)])
def test_matches_per_trial_reference(method, top_n):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((30, 16)).astype(np.float32)
    cohort = rng.standard_normal((50, 16)).astype(np.float32)
    enroll, test = rng.integers(0, 30, 200), rng.integers(0, 30, 200)
    got = normalize_scores(torch.from_numpy(emb), enroll, test, build_cohort(cohort), method, top_n or 300, chunk=7)
    want = _reference(emb, enroll, test, cohort, method, top_n if method == "as" else None)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_top_n_larger_than_cohort_is_s_norm_and_given_scores_are_used():
    rng = np.random.default_rng(1)
    emb, cohort = rng.standard_normal((10, 8)), rng.standard_normal((20, 8))
    enroll, test = np.arange(10), np.arange(10)[::-1]
    a = normalize_scores(emb, enroll, test, cohort, "as", top_n=1000)
    b = normalize_scores(emb, enroll, test, cohort, "s")
    np.testing.assert_allclose(a, b, rtol=1e-5)
    shifted = normalize_scores(emb, enroll, test, cohort, "z", scores=np.ones(10))
    mean, std = cohort_statistics(emb, cohort)
    np.testing.assert_allclose(shifted, (1 - mean.numpy()) / (std.numpy() + 1e-8), rtol=1e-5)


def test_cohort_averages_crops_and_labels():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 3, 4))
    cohort = build_cohort(x)
    assert cohort.shape == (6, 4)
    np.testing.assert_allclose(cohort.norm(dim=1).numpy(), 1, rtol=1e-6)
    per_label = build_cohort(x[:, 0], labels=["b", "a", "b", "a", "c", "c"])
    assert per_label.shape == (3, 4)
    expected_a = _unit(_unit(x[1, 0]) + _unit(x[3, 0]))
    np.testing.assert_allclose(per_label[0].numpy(), expected_a, rtol=1e-5)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="unknown normalisation 'q'"):
        normalize_scores(np.ones((2, 2)), [0], [1], np.ones((3, 2)), "q")
    with pytest.raises(IndexError, match=r"\[0, 2\)"):
        normalize_scores(np.ones((2, 2)), [0], [5], np.ones((3, 2)), "s")
    with pytest.raises(ValueError, match="3 labels for 2"):
        build_cohort(np.ones((2, 2)), labels=[1, 2, 3])
