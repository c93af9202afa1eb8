"""Calibration and linear fusion of verification scores by prior-weighted logistic regression.

Cosine scores rank trials but are not log-likelihood ratios, so actDCF and Cllr of raw scores mostly measure
miscalibration. An affine map llr = w . x + b of the K systems' scores x (K = 1: calibration; K > 1: fusion) is
trained on a *separate* calibration trial list (never the test list) by minimising the prior-weighted
cross-entropy of Brümmer's FoCal toolkit:

    C(w, b) = pi / N_tar * sum_tar log(1 + exp(-(llr_i + logit pi)))
              + (1 - pi) / N_non * sum_non log(1 + exp(llr_i + logit pi))

With pi = 0.5 this is Cllr * log 2; other values of pi (p_target) emphasise the operating point of a DCF. The
targets' and non-targets' weights do not depend on how many of each the list has, so a calibration list with 50 %
targets calibrates for the prior pi, not for 50 %. Solved with torch's LBFGS in float64 on standardised
scores (about 50 iterations suffice: the problem is convex and has K + 1 parameters).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from sslsv.data.manifest import Manifest
from sslsv.data.trials import Trials
from sslsv.evaluation.errors import EvaluationError

__all__ = ["Calibration", "make_calibration_trials", "train_calibration"]


def _matrix(scores) -> np.ndarray:
    """(T, K) float64 from a (T,) array, a (T, K) array or a list of K (T,) arrays."""
    if isinstance(scores, (list, tuple)):
        columns = [np.asarray(s, dtype=np.float64).reshape(-1) for s in scores]
        if len({len(c) for c in columns}) != 1:
            raise ValueError(f"systems have different numbers of scores: {[len(c) for c in columns]}")
        x = np.stack(columns, axis=1)
    else:
        x = np.asarray(scores, dtype=np.float64)
        x = x[:, None] if x.ndim == 1 else x
    if x.ndim != 2:
        raise ValueError(f"scores must be a (T,) or (T, K) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise EvaluationError(f"{int((~np.isfinite(x)).sum())} of {x.size} scores to calibrate are NaN/inf")
    return x


@dataclass
class Calibration:
    """llr = scores @ weights + bias. `p_target` is the prior it was trained for."""

    weights: np.ndarray  # (K,)
    bias: float
    p_target: float
    history: list[float] = field(default_factory=list)

    def apply(self, scores) -> np.ndarray:
        """(T,) calibrated log-likelihood ratios of (T,) or (T, K) scores (or a list of K systems)."""
        x = _matrix(scores)
        if x.shape[1] != len(self.weights):
            raise ValueError(f"calibration trained on {len(self.weights)} system(s), got {x.shape[1]}")
        return x @ self.weights + self.bias

    def to_dict(self) -> dict:
        return {"weights": self.weights.tolist(), "bias": self.bias, "p_target": self.p_target}

    @classmethod
    def from_dict(cls, data: dict) -> "Calibration":
        return cls(np.asarray(data["weights"], dtype=np.float64), float(data["bias"]), float(data["p_target"]))


def train_calibration(scores, labels, p_target: float = 0.5, max_iter: int = 50, l2: float = 1e-6) -> Calibration:
    """Fit weights and bias minimising the prior-weighted cross-entropy (module docstring).

    Args:
        scores: (T,) scores of one system, (T, K) or a list of K (T,) arrays for fusion, on calibration trials.
        labels: (T,) 1 for target trials, 0 otherwise.
        p_target: prior pi of the objective (0.5 = Cllr).
        max_iter: LBFGS iterations.
        l2: tiny ridge on the weights, which keeps the solution finite when the calibration data are separable.

    Returns:
        Calibration.

    Raises:
        EvaluationError: NaN/inf scores, or a single class.
        ValueError: shapes differ, or p_target outside (0, 1).
    """
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    x = _matrix(scores)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if len(y) != len(x):
        raise ValueError(f"{len(x)} scores for {len(y)} labels")
    if y.all() or not y.any():
        raise EvaluationError(f"calibration trials need both target and non-target trials: {int(y.sum())} target, "
                              f"{int((~y).sum())} non-target")
    # Standardise so LBFGS sees a well-conditioned problem; folded back into (w, b) at the end.
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1.0
    xs = torch.from_numpy((x - mean) / std)
    target = torch.from_numpy(y)
    weight = torch.where(target, p_target / y.sum(), (1 - p_target) / (~y).sum()).double()
    sign = torch.where(target, -1.0, 1.0).double()  # log(1 + exp(-(llr + offset))) for targets, +() otherwise
    offset = math.log(p_target / (1 - p_target))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-10, tolerance_change=1e-12)
    history: list[float] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        llr = xs @ w + b
        loss = (weight * torch.nn.functional.softplus(sign * (llr + offset))).sum() + l2 * (w * w).sum()
        loss.backward()
        history.append(float(loss.detach()))
        return loss

    optimizer.step(closure)
    w_raw = w.detach().numpy() / std
    b_raw = float(b.detach()) - float(w_raw @ mean)
    return Calibration(w_raw, b_raw, p_target, history)


def _non_target_pairs(draw, speaker_ids: np.ndarray, count: int) -> tuple[list[int], list[int]]:
    """`count` pairs of rows (drawn by `draw`) whose speakers differ."""
    non_a, non_b = [], []
    while len(non_a) < count:
        a, b = draw(count - len(non_a)), draw(count - len(non_a))
        ok = speaker_ids[a] != speaker_ids[b]
        non_a.extend(a[ok])
        non_b.extend(b[ok])
    return non_a, non_b


def make_calibration_trials(manifest: Manifest, n: int = 10_000, seed: int = 0,
                            durations: Sequence[tuple[float, float]] | None = None,
                            target_fraction: float = 0.5) -> Trials:
    """A calibration trial list drawn from a training manifest (held apart from any test list).

    Targets pair two utterances of one speaker, from different sessions when the speaker has several (same-session
    pairs are much easier and would make the calibration over-confident); non-targets pair two speakers. With
    `durations`, e.g. [(0, 4), (4, 8), (8, 1e9)] seconds, utterances are drawn equally from each duration bin
    (manifest Duration column required), so the calibration sees the mix of durations of the test conditions.

    Args:
        manifest: training manifest (labels are real speakers, or pseudo-labels for a label-free pipeline).
        n: number of trials.
        seed: random seed (the list is a deterministic function of it).
        durations: optional duration bins in seconds.
        target_fraction: share of target trials.

    Returns:
        Trials with manifest File paths (relative to the data root), labels int8.

    Raises:
        ValueError: fewer than two speakers, no speaker with two utterances, or bins without Duration / files.
    """
    rng = np.random.default_rng(seed)
    speaker_ids, names = manifest.speaker_ids()
    if len(names) < 2:
        raise ValueError(f"{manifest.path}: calibration trials need at least 2 speakers, found {len(names)}")
    sessions = np.asarray(manifest.sessions if manifest.sessions is not None else manifest.files)
    pool = np.arange(len(manifest))
    if durations:
        if manifest.durations is None:
            raise ValueError(f"{manifest.path}: duration bins need a Duration column")
        d = np.asarray(manifest.durations)
        bins = [pool[(d >= lo) & (d < hi)] for lo, hi in durations]
        empty = [durations[i] for i, b in enumerate(bins) if len(b) == 0]
        if empty:
            raise ValueError(f"{manifest.path}: no utterance in duration bin(s) {empty}")
    else:
        bins = [pool]

    def draw(count: int) -> np.ndarray:
        # Equal share per bin: pick a bin per draw, then a uniform member of it (vectorised over bins).
        which = rng.integers(len(bins), size=count)
        out = np.empty(count, dtype=np.int64)
        for k, members in enumerate(bins):
            mask = which == k
            out[mask] = members[rng.integers(len(members), size=int(mask.sum()))]
        return out

    n_target = int(round(n * target_fraction))
    # Per speaker, rows sorted by speaker so a partner is a random row of the same speaker's block.
    order = np.argsort(speaker_ids, kind="stable")
    starts = np.searchsorted(speaker_ids[order], np.arange(len(names)))
    counts = np.bincount(speaker_ids, minlength=len(names))
    if counts.max() < 2:
        raise ValueError(f"{manifest.path}: no speaker has two utterances; target trials are impossible")
    _, session_codes = np.unique(sessions, return_inverse=True)
    pairs = np.unique(np.stack([speaker_ids, session_codes.reshape(-1)], axis=1), axis=0)
    multi_session = np.bincount(pairs[:, 0], minlength=len(names)) > 1  # (speakers,)
    enroll, test = [], []
    attempts = 0
    while len(enroll) < n_target:
        attempts += 1
        if attempts > 50:
            raise ValueError(f"{manifest.path}: could not draw {n_target} target trials from the duration bins")
        a = draw(2 * (n_target - len(enroll)))
        a = a[counts[speaker_ids[a]] >= 2]
        spk = speaker_ids[a]
        b = order[starts[spk] + rng.integers(0, counts[spk])]
        ok = (a != b) & (~multi_session[spk] | (sessions[a] != sessions[b]))
        enroll.extend(a[ok][: n_target - len(enroll)])
        test.extend(b[ok][: n_target - len(test)])
    non_a, non_b = _non_target_pairs(draw, speaker_ids, n - n_target)
    files = np.asarray(manifest.files, dtype=object)
    e = np.concatenate([np.asarray(enroll, dtype=np.int64), np.asarray(non_a, dtype=np.int64)])
    t = np.concatenate([np.asarray(test, dtype=np.int64), np.asarray(non_b, dtype=np.int64)])
    labels = np.r_[np.ones(len(enroll), np.int8), np.zeros(len(non_a), np.int8)]
    shuffle = rng.permutation(len(labels))
    return Trials(list(files[e[shuffle]]), list(files[t[shuffle]]), labels[shuffle], f"calibration({manifest.path})")
