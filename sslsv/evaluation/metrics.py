"""Speaker-verification metrics: DET curve, EER, minDCF / actDCF, Cllr / minCllr.

Every metric here is computed exactly from one sort of the scores (no binning, no
threshold grid), so results do not depend on the score range and agree with
brute-force counting. Decision convention everywhere: a trial is *accepted* (declared
a target) when ``score >= threshold``. Equal scores are grouped: they always fall on
the same side of any threshold, so ties never produce operating points that no real
threshold could reach.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sslsv.evaluation.errors import EvaluationError

__all__ = [
    "VerificationMetrics",
    "compute_act_dcf",
    "compute_cllr",
    "compute_eer",
    "compute_metrics",
    "compute_min_cllr",
    "compute_min_dcf",
    "det_curve",
]


def _to_numpy(values):
    """Accept torch tensors (on any device) without importing torch here."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        return values.detach().cpu().numpy()
    return values


def _validate(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Check and convert (scores, labels) to (float64 scores, bool labels).

    Done once at every public entry point because a silently wrong EER (NaN scores
    sorted to one end, a trial list with no target, misaligned arrays) is much worse
    than a loud failure.

    Args:
        scores: (num_trials,) array-like of real scores, higher = more likely target.
        labels: (num_trials,) array-like of 0/1 or bool, 1 = target trial.

    Returns:
        (scores, labels) as 1-D float64 and bool arrays.

    Raises:
        EvaluationError: scores contain NaN, or only one class is present (what a user's
            model or trial list can cause).
        ValueError: shapes differ, arrays are not 1-D, or labels are not binary.
    """
    scores = np.asarray(_to_numpy(scores), dtype=np.float64)
    labels_in = np.asarray(_to_numpy(labels))
    if scores.ndim != 1 or labels_in.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D, got shapes {scores.shape} and {labels_in.shape}")
    if len(scores) != len(labels_in):
        raise ValueError(f"scores and labels have different lengths: {len(scores)} scores vs {len(labels_in)} labels")
    num_nan = int(np.isnan(scores).sum())
    if num_nan:
        raise EvaluationError(f"scores contain {num_nan} NaN value(s) out of {len(scores)} trials: the embeddings "
                              "or the score back-end (normalisation, calibration) produced NaN")
    if labels_in.dtype == bool:
        labels_bool = labels_in
    else:
        if not np.all((labels_in == 0) | (labels_in == 1)):
            bad = np.unique(labels_in[~((labels_in == 0) | (labels_in == 1))])[:5]
            raise ValueError(f"labels must be 0/1 (or bool), found other values such as {bad.tolist()}")
        labels_bool = labels_in.astype(bool)
    num_targets = int(labels_bool.sum())
    if num_targets == 0 or num_targets == len(labels_bool):
        raise EvaluationError(f"verification metrics need both target and non-target trials: {num_targets} "
                              f"target, {len(labels_bool) - num_targets} non-target")
    return scores, labels_bool


def _det_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """det_curve on already validated arrays (see det_curve)."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    sorted_labels = labels[order]
    num_targets = int(sorted_labels.sum())
    num_nontargets = len(sorted_labels) - num_targets
    # First index of each group of equal scores: thresholds sit exactly at the distinct scores.
    first = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    targets_below = np.r_[0, np.cumsum(sorted_labels)]  # targets_below[k] = #targets among the k lowest
    nontargets_below = np.arange(len(sorted_labels) + 1) - targets_below
    misses = np.r_[targets_below[first], num_targets]  # targets with score < threshold
    false_alarms = num_nontargets - np.r_[nontargets_below[first], num_nontargets]
    thresholds = np.r_[sorted_scores[first], np.inf]
    return false_alarms / num_nontargets, misses / num_targets, thresholds


def det_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact DET curve: error rates at every distinct score used as threshold.

    A trial is accepted when ``score >= threshold``. The thresholds are the distinct
    scores in increasing order followed by ``+inf`` (reject everything), so the curve
    runs from (FPR=1, FNR=0) to (FPR=0, FNR=1) and contains every operating point any
    threshold can reach. Tied scores are one group, moved across the threshold together.

    Args:
        scores: (num_trials,) scores, higher = more likely target.
        labels: (num_trials,) 0/1 or bool, 1 = target trial.

    Returns:
        (fpr, fnr, thresholds), each (num_distinct_scores + 1,): false-positive (false
        alarm) rate, false-negative (miss) rate as fractions, and the thresholds;
        fpr is non-increasing and fnr non-decreasing.
    """
    scores, labels = _validate(scores, labels)
    return _det_points(scores, labels)


def _eer_from_det(fpr: np.ndarray, fnr: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
    # fnr - fpr goes from -1 (first point) to +1 (last point) monotonically.
    i = int(np.argmax(fnr >= fpr))  # first point where the curves have crossed (i >= 1)
    gap_before = fpr[i - 1] - fnr[i - 1]  # > 0
    gap_after = fnr[i] - fpr[i]  # >= 0
    alpha = gap_before / (gap_before + gap_after)
    eer = fnr[i - 1] + alpha * (fnr[i] - fnr[i - 1])
    if np.isfinite(thresholds[i]):
        threshold = thresholds[i - 1] + alpha * (thresholds[i] - thresholds[i - 1])
    else:
        threshold = thresholds[i - 1]
    return float(eer), float(threshold)


def compute_eer(scores, labels) -> tuple[float, float]:
    """Equal error rate: where the miss rate equals the false-alarm rate.

    The DET curve is a staircase, so FNR = FPR rarely holds exactly at a threshold.
    Convention: take the last DET point with FNR < FPR and the first with FNR >= FPR
    (consecutive points, see det_curve) and intersect the straight segment joining them
    with the diagonal FNR = FPR. The EER is the common value there; the returned
    threshold is interpolated with the same weight between the two points' thresholds
    (or is the lower one when the upper is +inf). When a threshold achieves FNR = FPR
    exactly, that value is returned (e.g. 0 for perfectly separated scores).

    Args:
        scores: (num_trials,) scores, higher = more likely target.
        labels: (num_trials,) 0/1 or bool, 1 = target trial.

    Returns:
        (eer, threshold) with the EER as a fraction in [0, 1] (not percent).
    """
    return _eer_from_det(*det_curve(scores, labels))


def _check_dcf_params(p_target: float, c_miss: float, c_fa: float) -> None:
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"costs must be positive, got c_miss={c_miss}, c_fa={c_fa}")


def compute_min_dcf(scores, labels, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> tuple[float, float]:
    """Minimum normalised detection cost over all thresholds (NIST SRE definition).

    DCF(t) = c_miss * p_target * FNR(t) + c_fa * (1 - p_target) * FPR(t), divided by
    min(c_miss * p_target, c_fa * (1 - p_target)), the cost of the best trivial system
    (accept all or reject all), so 1.0 means "no better than not looking at the audio".
    Minimised exactly over every DET point (including accept-all and reject-all).

    Args:
        scores: (num_trials,) scores, higher = more likely target.
        labels: (num_trials,) 0/1 or bool, 1 = target trial.
        p_target: prior probability of a target trial, e.g. 0.01 or 0.05.
        c_miss: cost of a miss.
        c_fa: cost of a false alarm.

    Returns:
        (min_dcf, threshold): the normalised minimum and the threshold achieving it
        (accept when score >= threshold; +inf means reject all).
    """
    _check_dcf_params(p_target, c_miss, c_fa)
    fpr, fnr, thresholds = det_curve(scores, labels)
    dcf = c_miss * p_target * fnr + c_fa * (1.0 - p_target) * fpr
    best = int(np.argmin(dcf))
    norm = min(c_miss * p_target, c_fa * (1.0 - p_target))
    return float(dcf[best] / norm), float(thresholds[best])


def compute_act_dcf(scores, labels, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Actual normalised DCF: the cost when thresholding at the Bayes decision threshold.

    Assumes the scores are calibrated log-likelihood ratios (natural log), for which the
    Bayes-optimal threshold is log(c_fa * (1 - p_target) / (c_miss * p_target)), i.e.
    -log(p_target / (1 - p_target)) for unit costs. Raw cosine scores are not LLRs, so
    for them actDCF mostly measures miscalibration; compare with compute_min_dcf.
    Accepts when score >= threshold; normalised like compute_min_dcf.

    Args:
        scores: (num_trials,) log-likelihood ratios.
        labels: (num_trials,) 0/1 or bool, 1 = target trial.
        p_target: prior probability of a target trial.
        c_miss: cost of a miss.
        c_fa: cost of a false alarm.

    Returns:
        The normalised actual DCF (a float, >= the minimum DCF).
    """
    _check_dcf_params(p_target, c_miss, c_fa)
    scores, labels = _validate(scores, labels)
    threshold = np.log(c_fa * (1.0 - p_target)) - np.log(c_miss * p_target)
    accept = scores >= threshold
    fnr = np.count_nonzero(labels & ~accept) / np.count_nonzero(labels)
    fpr = np.count_nonzero(~labels & accept) / np.count_nonzero(~labels)
    dcf = c_miss * p_target * fnr + c_fa * (1.0 - p_target) * fpr
    return float(dcf / min(c_miss * p_target, c_fa * (1.0 - p_target)))


def _cllr(llrs: np.ndarray, labels: np.ndarray) -> float:
    # log(1 + exp(-s)) computed stably; +-inf give exact 0 or inf contributions.
    target_cost = np.logaddexp(0.0, -llrs[labels]).mean()
    nontarget_cost = np.logaddexp(0.0, llrs[~labels]).mean()
    return float((target_cost + nontarget_cost) / (2.0 * np.log(2.0)))


def compute_cllr(scores, labels) -> float:
    """Log-likelihood-ratio cost Cllr (Brümmer), in bits.

    Cllr = 1/(2 log 2) * [mean_tar log(1 + e^-s) + mean_non log(1 + e^s)], with scores
    taken as natural-log likelihood ratios. It scores calibration and discrimination
    together: 1.0 is the cost of the uninformative system (all scores 0), lower is
    better, and badly calibrated scores can exceed 1. Infinite scores are allowed: a
    correct +-inf costs 0, a wrong one makes Cllr infinite.

    Args:
        scores: (num_trials,) log-likelihood ratios.
        labels: (num_trials,) 0/1 or bool, 1 = target trial.

    Returns:
        Cllr in bits.
    """
    scores, labels = _validate(scores, labels)
    return _cllr(scores, labels)


def compute_min_cllr(scores, labels) -> float:
    """Minimum Cllr: Cllr after the best monotonic (order-preserving) recalibration.

    The pool-adjacent-violators algorithm (isotonic regression of the labels on the
    scores) gives the posterior P(target | score) of the optimal monotonic calibration;
    subtracting the empirical prior log-odds turns it into LLRs. Only the order of the
    scores matters, so scores are replaced by dense ranks first (equal scores share a
    rank, which keeps ties pooled and makes +-inf scores harmless). Posteriors of exactly
    0 or 1 (pure bins, e.g. perfect separation) are clipped to [1e-15, 1 - 1e-15] so
    the LLRs stay finite; this changes the result by < 1e-12 bits.

    Args:
        scores: (num_trials,) scores, higher = more likely target.
        labels: (num_trials,) 0/1 or bool, 1 = target trial.

    Returns:
        min Cllr in bits, in [0, 1] and <= compute_cllr for the same scores.
    """
    from scipy.stats import rankdata
    from sklearn.isotonic import IsotonicRegression

    scores, labels = _validate(scores, labels)
    ranks = rankdata(scores, method="dense").astype(np.float64)
    posterior = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True).fit_transform(ranks, labels.astype(np.float64))
    eps = 1e-15
    posterior = np.clip(posterior, eps, 1.0 - eps)
    prior = labels.mean()
    llrs = np.log(posterior) - np.log1p(-posterior) - (np.log(prior) - np.log1p(-prior))
    return _cllr(llrs, labels)


@dataclass
class VerificationMetrics:
    """Headline results of one trial list.

    Attributes:
        eer: equal error rate in percent.
        min_dcf_001: normalised minimum DCF at p_target = 0.01 (c_miss = c_fa = 1).
        min_dcf_005: normalised minimum DCF at p_target = 0.05 (c_miss = c_fa = 1).
        num_trials: number of trials scored.
        num_targets: number of target trials among them.
    """

    eer: float
    min_dcf_001: float
    min_dcf_005: float
    num_trials: int
    num_targets: int


def compute_metrics(scores, labels) -> VerificationMetrics:
    """EER (percent) and minDCF at p_target 0.01 and 0.05 from one DET curve.

    Args:
        scores: (num_trials,) scores, higher = more likely target.
        labels: (num_trials,) 0/1 or bool, 1 = target trial.

    Returns:
        VerificationMetrics.

    Raises:
        EvaluationError: scores contain NaN, or labels have a single class.
        ValueError: lengths differ.
    """
    scores, labels = _validate(scores, labels)
    fpr, fnr, thresholds = _det_points(scores, labels)
    eer, _ = _eer_from_det(fpr, fnr, thresholds)

    def min_dcf(p_target: float) -> float:
        return float(np.min(p_target * fnr + (1.0 - p_target) * fpr) / min(p_target, 1.0 - p_target))

    return VerificationMetrics(
        eer=100.0 * eer,
        min_dcf_001=min_dcf(0.01),
        min_dcf_005=min_dcf(0.05),
        num_trials=int(len(labels)),
        num_targets=int(labels.sum()),
    )
