"""Metrics checked against independent computations (brute-force counts, sklearn's ROC)."""
import numpy as np
import pytest
from sklearn.metrics import roc_curve

from sslsv.evaluation.metrics import (
    VerificationMetrics,
    compute_act_dcf,
    compute_cllr,
    compute_eer,
    compute_metrics,
    compute_min_cllr,
    compute_min_dcf,
    det_curve,
)


def _brute_force_points(scores, labels):
    """(fpr, fnr) at every distinct score and +inf, by direct counting (O(n * thresholds))."""
    labels = np.asarray(labels, dtype=bool)
    thresholds = np.r_[np.unique(scores), np.inf]
    accept = scores[None, :] >= thresholds[:, None]
    fpr = (accept & ~labels).sum(1) / (~labels).sum()
    fnr = (~accept & labels).sum(1) / labels.sum()
    return fpr, fnr, thresholds


def _brute_force_eer(scores, labels):
    fpr, fnr, _ = _brute_force_points(scores, labels)
    best = None
    for i in range(1, len(fpr)):  # segment joining consecutive points that straddles FNR = FPR
        d0, d1 = fpr[i - 1] - fnr[i - 1], fnr[i] - fpr[i]
        if d0 > 0 and d1 >= 0:
            a = d0 / (d0 + d1)
            best = fnr[i - 1] + a * (fnr[i] - fnr[i - 1])
            break
    return best


def _random_trials(rng, n=600, ties=False):
    labels = rng.random(n) < 0.3
    scores = rng.normal(size=n) + 1.2 * labels
    if ties:
        scores = np.round(scores, 1)  # many equal scores, mixed across classes
    return scores, labels.astype(int)


@pytest.mark.parametrize("ties", [False, True])
def test_det_curve_matches_brute_force_and_sklearn(ties):
    rng = np.random.default_rng(0)
    scores, labels = _random_trials(rng, ties=ties)
    fpr, fnr, thr = det_curve(scores, labels)
    bf_fpr, bf_fnr, bf_thr = _brute_force_points(scores, labels)
    np.testing.assert_allclose(thr, bf_thr)
    np.testing.assert_allclose(fpr, bf_fpr, atol=1e-12)
    np.testing.assert_allclose(fnr, bf_fnr, atol=1e-12)
    assert np.all(np.diff(fpr) <= 0) and np.all(np.diff(fnr) >= 0)
    # sklearn: decreasing thresholds, first point at +inf, score >= threshold accepted.
    sk_fpr, sk_tpr, sk_thr = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr[::-1], sk_fpr, atol=1e-12)
    np.testing.assert_allclose(fnr[::-1], 1 - sk_tpr, atol=1e-12)
    np.testing.assert_allclose(thr[::-1][1:], sk_thr[1:])


@pytest.mark.parametrize("ties", [False, True])
def test_eer_matches_brute_force(ties):
    rng = np.random.default_rng(1)
    for _ in range(5):
        scores, labels = _random_trials(rng, ties=ties)
        eer, threshold = compute_eer(scores, labels)
        assert eer == pytest.approx(_brute_force_eer(scores, labels), abs=1e-12)
        # The threshold lies between the thresholds of the two DET points that straddle FNR = FPR.
        fpr, fnr, thr = _brute_force_points(scores, labels)
        i = int(np.argmax(fnr >= fpr))
        assert thr[i - 1] <= threshold <= thr[i]


def test_eer_close_to_sklearn_roc_crossing():
    rng = np.random.default_rng(2)
    scores, labels = _random_trials(rng, n=20000)
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1 - tpr
    i = np.nanargmin(np.abs(fnr - fpr))
    eer, _ = compute_eer(scores, labels)
    assert eer == pytest.approx((fnr[i] + fpr[i]) / 2, abs=2e-3)


def test_eer_perfect_separation_and_chance():
    labels = np.r_[np.ones(50), np.zeros(50)]
    scores = np.r_[np.linspace(1, 2, 50), np.linspace(-2, 0.5, 50)]
    eer, threshold = compute_eer(scores, labels)
    assert eer == 0.0
    assert 0.5 < threshold <= 1.0
    assert compute_min_dcf(scores, labels, 0.01)[0] == 0.0

    rng = np.random.default_rng(3)
    labels = rng.random(200_000) < 0.5
    scores = rng.normal(size=200_000)
    eer, _ = compute_eer(scores, labels)
    assert eer == pytest.approx(0.5, abs=0.01)
    # All scores tied: the only operating points are accept-all and reject-all.
    assert compute_eer(np.zeros(10), np.r_[np.ones(3), np.zeros(7)])[0] == pytest.approx(0.5)


@pytest.mark.parametrize("p_target,c_miss,c_fa", [(0.01, 1, 1), (0.05, 1, 1), (0.1, 10, 1)])
def test_min_dcf_matches_brute_force(p_target, c_miss, c_fa):
    rng = np.random.default_rng(4)
    scores, labels = _random_trials(rng, ties=True)
    fpr, fnr, thr = _brute_force_points(scores, labels)
    dcf = (c_miss * p_target * fnr + c_fa * (1 - p_target) * fpr) / min(c_miss * p_target, c_fa * (1 - p_target))
    value, threshold = compute_min_dcf(scores, labels, p_target, c_miss, c_fa)
    assert value == pytest.approx(dcf.min(), abs=1e-12)
    assert dcf[np.searchsorted(thr, threshold)] == pytest.approx(value, abs=1e-12)
    assert 0.0 <= value <= 1.0 + 1e-12


def test_act_dcf_is_cost_at_bayes_threshold():
    rng = np.random.default_rng(5)
    labels = rng.random(5000) < 0.2
    scores = rng.normal(size=5000) * 2 + 3 * labels - 2
    for p in (0.01, 0.05, 0.5):
        tau = -np.log(p / (1 - p))
        fnr = np.mean(scores[labels] < tau)
        fpr = np.mean(scores[~labels] >= tau)
        expected = (p * fnr + (1 - p) * fpr) / min(p, 1 - p)
        assert compute_act_dcf(scores, labels, p) == pytest.approx(expected, abs=1e-12)
        assert compute_act_dcf(scores, labels, p) >= compute_min_dcf(scores, labels, p)[0] - 1e-12


def test_cllr_calibrated_zero_and_min_cllr():
    rng = np.random.default_rng(6)
    n = 20000
    labels = rng.random(n) < 0.5
    # Equal-variance Gaussians N(+-mu/2, 1): the exact LLR is mu * x.
    mu = 2.0
    x = rng.normal(size=n) + np.where(labels, mu / 2, -mu / 2)
    llr = mu * x
    cllr = compute_cllr(llr, labels)
    assert cllr < 1.0
    min_cllr = compute_min_cllr(llr, labels)
    assert 0.0 <= min_cllr <= cllr + 1e-9
    assert cllr - min_cllr < 0.02  # well calibrated: little calibration loss
    assert compute_cllr(np.zeros(10), np.r_[np.ones(4), np.zeros(6)]) == pytest.approx(1.0)
    # Miscalibrated (scaled and shifted) LLRs: Cllr grows, min Cllr does not change.
    bad = 5 * llr + 3
    assert compute_cllr(bad, labels) > cllr
    assert compute_min_cllr(bad, labels) == pytest.approx(min_cllr, abs=1e-9)


def test_min_cllr_edge_cases():
    labels = np.r_[np.ones(20), np.zeros(30)]
    separated = np.r_[np.full(20, np.inf), [-np.inf], np.linspace(-5, 0, 29)]
    assert compute_min_cllr(separated, labels) == pytest.approx(0.0, abs=1e-9)
    assert compute_cllr(np.r_[np.full(20, np.inf), np.full(30, -np.inf)], labels) == 0.0
    assert compute_cllr(np.r_[np.full(20, -np.inf), np.full(30, -np.inf)], labels) == np.inf
    # Uninformative scores: min Cllr is exactly 1 (the empirical-prior system).
    assert compute_min_cllr(np.zeros(50), labels) == pytest.approx(1.0, abs=1e-9)


def test_compute_metrics_and_errors():
    rng = np.random.default_rng(7)
    scores, labels = _random_trials(rng, n=2000)
    metrics = compute_metrics(scores, labels)
    assert isinstance(metrics, VerificationMetrics)
    assert metrics.eer == pytest.approx(100 * compute_eer(scores, labels)[0])
    assert metrics.min_dcf_001 == pytest.approx(compute_min_dcf(scores, labels, 0.01)[0])
    assert metrics.min_dcf_005 == pytest.approx(compute_min_dcf(scores, labels, 0.05)[0])
    assert metrics.num_trials == 2000 and metrics.num_targets == int(labels.sum())
    assert isinstance(metrics.num_trials, int) and isinstance(metrics.eer, float)

    with pytest.raises(ValueError, match="both target and non-target"):
        compute_metrics([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="different lengths"):
        compute_metrics([0.1, 0.2, 0.3], [1, 0])
    with pytest.raises(ValueError, match="2 NaN"):
        compute_metrics([0.1, np.nan, np.nan, 0.3], [1, 0, 1, 0])
    with pytest.raises(ValueError, match="0/1"):
        compute_metrics([0.1, 0.2], [2, 0])
    with pytest.raises(ValueError):
        compute_min_dcf([0.1, 0.2], [1, 0], p_target=1.5)


def test_accepts_torch_and_bool_inputs():
    torch = pytest.importorskip("torch")
    scores = torch.tensor([0.9, 0.8, 0.1, 0.3])
    labels = torch.tensor([True, True, False, False])
    assert compute_metrics(scores, labels).eer == 0.0
