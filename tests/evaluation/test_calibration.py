"""Calibration / fusion: recovers a known LLR map, fusion is not worse than the better system, trial generation."""
import numpy as np
import pytest

from sslsv.data.manifest import Manifest
from sslsv.evaluation.calibration import Calibration, make_calibration_trials, train_calibration
from sslsv.evaluation.metrics import compute_cllr, compute_eer, compute_min_cllr


def _data(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.3
    informative = np.where(labels, 1.0, -1.0) + 0.8 * rng.standard_normal(n)
    s1 = 3.0 * informative + 2.0 * rng.standard_normal(n) + 5.0  # badly scaled and offset
    s2 = 0.2 * informative + 0.1 * rng.standard_normal(n) - 1.0
    return np.stack([s1, s2], axis=1), labels


def test_calibration_recovers_gaussian_llr():
    # Equal-variance Gaussians N(+-1, 1) have LLR = 2 s; scores a * s + c must map back to it.
    rng = np.random.default_rng(0)
    labels = rng.random(40_000) < 0.5
    s = np.where(labels, 1.0, -1.0) + rng.standard_normal(len(labels))
    cal = train_calibration(4.0 * s - 3.0, labels)
    assert cal.weights[0] == pytest.approx(0.5, rel=0.05) and cal.bias == pytest.approx(1.5, rel=0.05)
    llr = cal.apply(4.0 * s - 3.0)
    assert compute_cllr(llr, labels) == pytest.approx(compute_min_cllr(llr, labels), abs=0.01)
    assert Calibration.from_dict(cal.to_dict()).apply([1.0]) == pytest.approx(cal.apply([1.0]))


def test_fusion_not_worse_than_the_better_system():
    x_cal, y_cal = _data(8000, 1)
    x_test, y_test = _data(20_000, 2)
    singles = [train_calibration(x_cal[:, k], y_cal).apply(x_test[:, k]) for k in range(2)]
    fused = train_calibration([x_cal[:, 0], x_cal[:, 1]], y_cal).apply(x_test)
    best_cllr = min(compute_cllr(s, y_test) for s in singles)
    best_eer = min(compute_eer(s, y_test)[0] for s in singles)
    assert compute_cllr(fused, y_test) <= best_cllr + 1e-3
    assert compute_eer(fused, y_test)[0] <= best_eer + 1e-3
    assert compute_cllr(fused, y_test) < 0.6  # and it is calibrated (raw scores' Cllr is far above 1)
    assert compute_cllr(x_test[:, 0], y_test) > 1


def test_calibration_errors():
    with pytest.raises(ValueError, match="both target and non-target"):
        train_calibration(np.ones(4), np.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        train_calibration(np.array([np.nan, 1.0]), [0, 1])
    cal = train_calibration(np.array([0.0, 1.0, 0.2, 0.9]), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="1 system"):
        cal.apply(np.ones((3, 2)))


def test_make_calibration_trials():
    files, speakers, sessions, durations = [], [], [], []
    for s in range(20):
        for v in range(3):
            for u in range(4):
                files.append(f"vox/id{s:03d}/v{v}/{u}.wav")
                speakers.append(f"id{s:03d}")
                sessions.append(f"v{v}")
                durations.append(2.0 + (u % 2) * 6.0)
    manifest = Manifest(files, speakers, sessions, durations, "train.csv")
    trials = make_calibration_trials(manifest, n=1000, seed=3, durations=[(0, 4), (4, 100)])
    assert len(trials) == 1000 and trials.labels.sum() == 500
    spk = lambda f: f.split("/")[1]
    ses = lambda f: f.split("/")[2]
    same = np.array([spk(a) == spk(b) for a, b in zip(trials.enroll, trials.test)])
    assert (same == trials.labels.astype(bool)).all()
    assert all(ses(a) != ses(b) for a, b, l in zip(trials.enroll, trials.test, trials.labels) if l)
    long = np.mean([d > 4 for d in (durations[files.index(f)] for f in trials.enroll)])
    assert 0.4 < long < 0.6
    again = make_calibration_trials(manifest, n=1000, seed=3, durations=[(0, 4), (4, 100)])
    assert again.enroll == trials.enroll
    with pytest.raises(ValueError, match="duration bin"):
        make_calibration_trials(manifest, n=10, durations=[(50, 60)])
