"""Multi-crop test embeddings and scoring: N evenly spaced crops of L seconds per utterance.

Instead of one full-length embedding, every utterance gets N embeddings, one per crop of L seconds. The crops
start at N evenly spaced positions from the beginning to the end of the file (the first crop starts at sample 0,
the last one ends at the last sample); a file shorter than L is first repeated (wrap-around, as in training) to
exactly L samples, never zero-padded, so its N crops are identical. A trial's score is the mean of the N x N
matrix of cosine similarities between the enrolment crops and the test crops.

Scoring is vectorised over trials: chunks of trials gather their (chunk, N, D) normalised crop embeddings and one
einsum reduces each pair of crop sets to the mean of its N x N cosine matrix. Since
mean_ij <e_i, t_j> = <mean_i e_i, mean_j t_j>, the einsum contracts to a dot product of crop means, so the cost
is that of plain cosine scoring (no N x N matrix is materialised).

The crops themselves are read and embedded by sslsv.evaluation.embeddings (`extract_embeddings` with
`Crops(seconds, count)`, `read_crops`). Score normalisation against a cohort uses the same definition of an
utterance-vs-cohort score: the mean over the utterance's crops of the cosine with a cohort row
(sslsv.evaluation.normalization, through `utterance_vectors`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["multicrop_scores", "utterance_vectors"]


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def multicrop_scores(embeddings, enroll_idx, test_idx, batch: int = 100_000) -> np.ndarray:
    """Mean of the N x N crop cosine matrix of every trial, in chunks of `batch` trials (no loop over trials).

    Args:
        embeddings: (U, N, D) crop embeddings (tensor on any device, or numpy); (U, D) is treated as N = 1.
        enroll_idx: (T,) row of each trial's enrolment utterance.
        test_idx: (T,) row of each trial's test utterance.
        batch: trials per chunk.

    Returns:
        (T,) float32 numpy scores in [-1, 1].
    """
    e = _as_tensor(embeddings).detach().float()
    if e.dim() == 2:
        e = e[:, None, :]
    if e.dim() != 3:
        raise ValueError(f"embeddings must be (U, N, D), got shape {tuple(e.shape)}")
    enroll = torch.as_tensor(np.asarray(enroll_idx), dtype=torch.int64).reshape(-1)
    test = torch.as_tensor(np.asarray(test_idx), dtype=torch.int64).reshape(-1)
    if enroll.shape != test.shape:
        raise ValueError(f"enroll_idx and test_idx differ in length: {len(enroll)} vs {len(test)}")
    for name, idx in (("enroll_idx", enroll), ("test_idx", test)):
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= e.shape[0]):
            raise IndexError(f"{name} has values outside [0, {e.shape[0]})")
    normed = F.normalize(e, dim=-1)
    n = normed.shape[1]
    scores = torch.empty(len(enroll), dtype=torch.float32)
    with torch.inference_mode():
        for start in range(0, len(enroll), batch):
            a = normed[enroll[start:start + batch].to(normed.device)]  # (b, N, D)
            b = normed[test[start:start + batch].to(normed.device)]  # (b, N, D)
            scores[start:start + batch] = (torch.einsum("tid,tjd->t", a, b) / (n * n)).cpu()
    return scores.numpy()


def utterance_vectors(embeddings) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, D) direction and (U,) scale such that an utterance's mean crop cosine with a unit vector c is
    scale * <normalize(direction), c>: for (U, N, D) the mean m of the normalised crops and |m|; for (U, D) the
    embedding itself and 1."""
    e = _as_tensor(embeddings).detach().float()
    if e.dim() == 2:
        return e, torch.ones(e.shape[0], device=e.device)
    if e.dim() != 3:
        raise ValueError(f"embeddings must be (U, D) or (U, N, D), got shape {tuple(e.shape)}")
    mean = F.normalize(e, dim=-1).mean(dim=1)
    return mean, mean.norm(dim=1)
