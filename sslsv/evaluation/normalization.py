"""Score normalisation against a cohort: Z-norm, T-norm, S-norm and adaptive S-norm (AS-norm).

With s(e, t) the cosine score of a trial, and mu_x, sigma_x the mean and (population) standard deviation of the
scores of utterance x against a cohort of impostor embeddings:

    Z-norm:   (s - mu_e) / sigma_e                                  (enrolment statistics, whole cohort)
    T-norm:   (s - mu_t) / sigma_t                                  (test statistics, whole cohort)
    S-norm:   0.5 * [(s - mu_e) / sigma_e + (s - mu_t) / sigma_t]   (whole cohort)
    AS-norm:  S-norm with mu, sigma over the top_n highest cohort scores of each utterance only
              (Matejka et al., Interspeech 2017; wespeaker's score_norm.py uses top_n = 300)

Statistics depend on a single utterance, not on the trial, so they are computed once per unique utterance: the
(U, D) embeddings of the utterances a trial list uses are multiplied against the (C, D) cohort in chunks of rows,
top-k is taken once per row, and each trial gathers its two utterances' statistics. Cost: U x C x D flops for the
matmuls plus one gather per trial, with no Python loop over trials (VoxCeleb1-E: 580k trials, ~4.7k utterances).

Embeddings are (U, D) full-length embeddings or (U, N, D) crop embeddings (multi-crop scoring). For crops, an
utterance's cohort score is the mean over its crops of the cosine with a cohort row, the counterpart of the mean
N x N crop cosine used as trial score; it equals |m| cos(m, c) with m the mean of the normalised crops
(multicrop.utterance_vectors), so the statistics are those of m scaled by |m|.

The cohort is usually the training set: one embedding per utterance (crops averaged), or one per speaker when
labels are given. For pure self-supervised results, speaker labels must not be used: average per pseudo-speaker
(cluster labels) or per utterance instead.
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sslsv.evaluation.multicrop import multicrop_scores, utterance_vectors
from sslsv.evaluation.scoring import cosine_scores

__all__ = ["METHODS", "build_cohort", "cohort_statistics", "normalize_scores"]

METHODS = ("z", "t", "s", "as")
Method = Literal["z", "t", "s", "as"]


def _tensor(x, device=None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.ascontiguousarray(x))
    return t.to(device) if device is not None else t


def build_cohort(embeddings, labels: Sequence | None = None) -> torch.Tensor:
    """Cohort matrix from training embeddings, L2-normalised rows.

    Args:
        embeddings: (N, D) one embedding per utterance, or (N, K, D) K crops per utterance (averaged, since a
            cohort entry should describe an utterance, not a random 2 s of it).
        labels: optional (N,) speaker or pseudo-speaker label of each utterance: the normalised embeddings of a
            label are averaged into one cohort row (rows ordered by sorted label).

    Returns:
        (C, D) float32 tensor with unit rows, C = N or the number of distinct labels.

    Raises:
        ValueError: wrong shape or a label list of another length.
    """
    x = _tensor(embeddings).float()
    if x.dim() == 3:
        x = F.normalize(x, dim=-1).mean(dim=1)
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"cohort embeddings must be (N, D) or (N, K, D) with N > 0, got {tuple(x.shape)}")
    x = F.normalize(x, dim=1)
    if labels is not None:
        labels = np.asarray(labels)
        if len(labels) != x.shape[0]:
            raise ValueError(f"{len(labels)} labels for {x.shape[0]} cohort embeddings")
        _, inverse = np.unique(labels, return_inverse=True)
        index = torch.as_tensor(inverse.reshape(-1), dtype=torch.int64, device=x.device)
        sums = torch.zeros(int(index.max()) + 1, x.shape[1], device=x.device).index_add_(0, index, x)
        x = F.normalize(sums, dim=1)
    return x


def cohort_statistics(embeddings, cohort, top_n: int | None = None,
                      chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population std of each utterance's cohort scores (optionally its top_n highest only).

    Args:
        embeddings: (U, D) utterance embeddings (normalised here), or (U, N, D) crop embeddings, whose cohort
            score is the mean crop cosine with a cohort row (see the module docstring).
        cohort: (C, D) cohort from build_cohort (normalised here too, harmlessly).
        top_n: use only the top_n highest scores of each row (AS-norm); None = all C.
        chunk: rows per matmul, which bounds memory at chunk x C floats.

    Returns:
        (mean, std), each (U,) float32 on the embeddings' device.
    """
    x = _tensor(embeddings)
    if x.dim() == 3:
        # Top-n selection is unchanged by the positive scale |m|; the statistics scale with it.
        direction, scale = utterance_vectors(x)
        mean, std = _statistics(direction, cohort, top_n, chunk)
        return mean * scale.to(mean.device), std * scale.to(std.device)
    return _statistics(x, cohort, top_n, chunk)


def _statistics(embeddings: torch.Tensor, cohort, top_n: int | None, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cohort_statistics of (U, D) embeddings."""
    e = F.normalize(embeddings.float(), dim=1)
    c = F.normalize(_tensor(cohort, e.device).float(), dim=1)
    if e.dim() != 2 or c.dim() != 2 or e.shape[1] != c.shape[1]:
        raise ValueError(f"embeddings {tuple(e.shape)} and cohort {tuple(c.shape)} must be (U, D) and (C, D)")
    k = c.shape[0] if top_n is None else int(top_n)
    if not 1 <= k <= c.shape[0]:
        raise ValueError(f"top_n must be in [1, {c.shape[0]}] (the cohort size), got {top_n}")
    mean = torch.empty(e.shape[0], device=e.device)
    std = torch.empty(e.shape[0], device=e.device)
    with torch.inference_mode():
        for start in range(0, e.shape[0], chunk):
            scores = e[start:start + chunk] @ c.T  # (chunk, C)
            if k < c.shape[0]:
                scores = scores.topk(k, dim=1, sorted=False).values  # (chunk, k)
            mean[start:start + chunk] = scores.mean(dim=1)
            std[start:start + chunk] = scores.std(dim=1, unbiased=False)
    return mean.clone(), std.clone()


def normalize_scores(embeddings, enroll_idx, test_idx, cohort, method: Method = "as", top_n: int | None = 300,
                     scores=None, chunk: int = 2048, eps: float = 1e-8) -> np.ndarray:
    """Normalised scores of every trial (see the module docstring for the formulas).

    Only the embedding rows used by some trial get statistics, so passing the embeddings of all utterances
    costs nothing extra.

    Args:
        embeddings: (N, D) utterance embeddings or (N, K, D) crop embeddings (tensor on any device, or numpy).
        enroll_idx: (T,) row of each trial's enrolment utterance.
        test_idx: (T,) row of each trial's test utterance.
        cohort: (C, D) cohort (build_cohort).
        method: "z", "t", "s" or "as".
        top_n: cohort scores kept per utterance for "as" (ignored for z/t/s, which use the whole cohort);
            clipped to C.
        scores: (T,) raw scores; default the cosine similarity of the pair (for crops, the mean K x K crop
            cosine, multicrop_scores).
        chunk: rows per cohort matmul.
        eps: added to the standard deviations.

    Returns:
        (T,) float32 numpy array.
    """
    if method not in METHODS:
        raise ValueError(f"unknown normalisation {method!r}; choose one of {', '.join(METHODS)}")
    e = _tensor(embeddings).float()
    enroll = torch.as_tensor(np.ascontiguousarray(enroll_idx), dtype=torch.int64).reshape(-1)
    test = torch.as_tensor(np.ascontiguousarray(test_idx), dtype=torch.int64).reshape(-1)
    if enroll.shape != test.shape:
        raise ValueError(f"enroll_idx and test_idx differ in length: {len(enroll)} vs {len(test)}")
    if len(enroll) and (min(int(enroll.min()), int(test.min())) < 0
                        or max(int(enroll.max()), int(test.max())) >= e.shape[0]):
        raise IndexError(f"trial indices must be in [0, {e.shape[0]})")
    if e.dim() not in (2, 3):
        raise ValueError(f"embeddings must be (N, D) or (N, K, D), got shape {tuple(e.shape)}")
    if scores is None:
        scores = cosine_scores(e, enroll, test) if e.dim() == 2 else multicrop_scores(e, enroll, test)
    s = _tensor(scores).float().cpu().reshape(-1)
    if s.shape != enroll.shape:
        raise ValueError(f"{len(s)} scores for {len(enroll)} trials")
    c = _tensor(cohort, e.device)
    k = None if method != "as" else min(int(top_n or c.shape[0]), c.shape[0])
    # Statistics only for rows some trial uses; `inverse` maps each trial to its row among them.
    used, inverse = torch.unique(torch.cat([enroll, test]), return_inverse=True)
    mean, std = cohort_statistics(e[used.to(e.device)], c, k, chunk)
    mean, std = mean.cpu(), std.cpu() + eps
    ie, it = inverse[: len(enroll)], inverse[len(enroll):]
    z = (s - mean[ie]) / std[ie]
    t = (s - mean[it]) / std[it]
    out = z if method == "z" else t if method == "t" else 0.5 * (z + t)
    return out.numpy().astype(np.float32, copy=False)
