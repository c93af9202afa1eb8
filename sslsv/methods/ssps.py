"""SSPS: Self-Supervised Positive Sampling, an option of SimCLR and DINO (`method.ssps`).

T. Lepage, R. Dehak, "Self-supervised frameworks for speaker verification via bootstrapped positive sampling",
IEEE/ACM TASLP 33, 2025 (arXiv:2501.17772; review [89]) and "SSPS: Self-supervised positive sampling for robust
self-supervised speaker verification", Interspeech 2025 (review [52]). Review sections 3.1.1, 3.1.2 and 6.5
(SimCLR-SSPS 2.57 % and DINO-SSPS 2.53 % EER on VoxCeleb1-O with ECAPA-TDNN, review Table 14). Authors' code:
theolepage/sslsv `methods/_SSPS/` (SSPS.py, SSPSSamplingMethods.py, KMeans.py) and `methods/_BaseSiameseMethod.py`,
`methods/DINO/DINO.py` (`train_step`).

Same-utterance positives share the recording's channel, so the model learns it (review section 6.5). SSPS replaces
each anchor's positive by a pseudo-positive: an embedding, from a queue of past steps, of another utterance that lies
near the anchor in the representation space, hopefully the same speaker in another recording.

- Reference representations: the last view of the batch (`dataset.views`: one extra group at the end, e.g. one
  4 s crop, the authors' `ssps_frame_length`; without augmentation in the authors' setup) goes through the encoder
  (SimCLR) or the teacher encoder (DINO) in eval mode without gradient, L2-normalised: y_ref.
- Collection, from epoch `start_epoch - 1` on: after each optimiser step the step's (manifest row, y_ref, positive
  embeddings) of every rank (`distributed.gather_no_grad`) go into
    - a reference bank indexed by manifest row (rank 0, CPU, float16; k-means modes), and
    - a FIFO queue of `queue_size` entries (Q'): row, y_ref and the positive-side embeddings (SimCLR: the second
      view's embedding; DINO: the teacher outputs of each global view), the same on every rank.
- Clustering, at the start of each epoch from `start_epoch` on (k-means modes): spherical k-means (faiss,
  `clusters` = K, `kmeans_iterations`) of the reference bank on rank 0, initialised from the previous epoch's
  centroids (the authors restart from random rows each epoch), broadcast to every rank: an assignment per manifest
  row and, for each cluster, its `inter_sampling_size` (M) nearest other clusters by centroid cosine (M = 0: the
  cluster itself).
- Sampling, from `start_epoch` on, for each anchor (manifest row i, reference y_i):
    - `kmeans-repr` (the paper's SSPS-Clustering): draw a cluster among the M nearby clusters of i's cluster
      (`inter_sampling_prob`), then a queue entry assigned to that cluster (`intra_sampling_prob` over the
      `intra_sampling_size` entries whose reference is closest to y_i); its embedding replaces the positive.
    - `knn` (SSPS-NN): a queue entry among the `intra_sampling_size` nearest to y_i by reference cosine.
    - `cluster` (centroid sampling, the authors' `kmeans`): the drawn cluster's centroid replaces the positive
      (needs the positive in the representation space: SimCLR without projector).
  `uniform` draws uniformly; `exp` gives the r-th closest candidate the weight lambda exp(-lambda r)
  (`*_sampling_lambda`). Deviation: entries of the anchor's own manifest row are never drawn (the authors' kNN
  excludes them, their clustering mode may draw them, which gives back the same-utterance positive). Anchors with
  no candidate keep their own positive.
- Diagnostics (logged, never used for training): `ssps_coverage` (fraction of anchors whose positive was replaced)
  and, for queue entries, `ssps_speaker_accuracy` (same speaker label as the anchor; meaningless when the
  manifest's Speaker column is a placeholder), and when the recording of each manifest row is known
  (`TrainingInfo.recordings`), `ssps_same_recording` (drawn from the anchor's own recording) and `ssps_accuracy`
  (same speaker, other recording: the pseudo-positive SSPS looks for).

State: assignments, centroids, neighbour table and the queue are checkpointed (`extra_state`); the reference bank
is not (as DeepCluster's memory bank): after a resume the next clustering uses the rows embedded since then.
Memory: the DINO queue holds 2 x Q' x out_dim floats (2 x 25 000 x 65 536 x 4 bytes = 13 GB at the paper's
settings, as the authors' code).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslsv import distributed
from sslsv.config import ConfigError, require


@dataclass
class SSPSConfig:
    """Defaults: the authors' SSPSConfig; the paper's best setting (K = Q' = 25 000, M = 1) is in the shipped configs."""

    enabled: bool = False
    start_epoch: int = 100  # first epoch (from 0) with pseudo-positives; collection starts one epoch earlier
    sampling: Literal["kmeans-repr", "knn", "cluster"] = "kmeans-repr"
    queue_size: int = 50000  # Q': entries of the positive queue
    clusters: int = 50000  # K (capped at the number of embedded rows)
    kmeans_iterations: int = 10
    inter_sampling_size: int = 0  # M: nearby clusters to draw from (0: the anchor's own cluster)
    inter_sampling_prob: Literal["uniform", "exp"] = "uniform"
    inter_sampling_lambda: float = 0.7
    intra_sampling_size: int = 10_000_000  # candidates kept per anchor (kNN: the k nearest)
    intra_sampling_prob: Literal["uniform", "exp"] = "uniform"
    intra_sampling_lambda: float = 0.7
    seed: int = 0  # k-means seed (plus the epoch)

    def __post_init__(self) -> None:
        require(self.start_epoch >= 0, "method.ssps.start_epoch", ">= 0", self.start_epoch)
        for name in ("queue_size", "clusters", "kmeans_iterations", "intra_sampling_size"):
            require(getattr(self, name) >= 1, f"method.ssps.{name}", "at least 1", getattr(self, name))
        require(self.inter_sampling_size >= 0, "method.ssps.inter_sampling_size", ">= 0", self.inter_sampling_size)
        for name in ("inter_sampling_lambda", "intra_sampling_lambda"):
            require(getattr(self, name) > 0, f"method.ssps.{name}", "positive", getattr(self, name))
        if self.sampling != "knn" and self.inter_sampling_size >= self.clusters:
            raise ConfigError(f"method.ssps.inter_sampling_size: must be below method.ssps.clusters "
                              f"({self.clusters}), got {self.inter_sampling_size}")


def rank_weights(count: int, kind: str, lam: float, device: torch.device) -> torch.Tensor:
    """Sampling weights of the candidates ranked 0..count-1 (closest first): uniform or lambda exp(-lambda r)."""
    if kind == "exp":
        return lam * torch.exp(-lam * torch.arange(count, dtype=torch.float32, device=device))
    return torch.ones(count, dtype=torch.float32, device=device)


def draw_ranked(scores: torch.Tensor, size: int, kind: str, lam: float) -> torch.Tensor:
    """For each row of scores (A, C) (-inf: not a candidate), draw one column among its `size` highest-scoring
    candidates with the rank weights of `kind`. Returns (A,) column indices, -1 for rows without a candidate."""
    k = min(size, scores.shape[1])
    top = scores.topk(k, dim=1)
    allowed = torch.isfinite(top.values)
    weights = rank_weights(k, kind, lam, scores.device)[None] * allowed
    chosen = torch.full((scores.shape[0],), -1, dtype=torch.long, device=scores.device)
    has = allowed.any(dim=1)
    if has.any():
        picks = torch.multinomial(weights[has], 1)[:, 0]
        chosen[has] = top.indices[has].gather(1, picks[:, None])[:, 0]
    return chosen


def spherical_kmeans(x: np.ndarray, k: int, iterations: int, seed: int,
                     init: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """faiss spherical k-means of x (n, D) float32, from `init` (k, D) centroids when given -> (labels (n,),
    unit centroids (k, D))."""
    import faiss

    # faiss's GPU k-means when this faiss build sees a GPU (the CPU one costs N x K x D per iteration: minutes
    # at VoxCeleb2 size, K = 25 000)
    gpu = hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    kmeans = faiss.Kmeans(x.shape[1], k, niter=iterations, spherical=True, seed=seed, verbose=False,
                          min_points_per_centroid=1, gpu=gpu)
    kmeans.train(x, init_centroids=None if init is None else np.ascontiguousarray(init, dtype=np.float32))
    _, labels = kmeans.index.search(x, 1)
    return labels[:, 0].astype(np.int64), kmeans.centroids


def nearby_clusters(centroids: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """(K, max(size, 1)) cluster indices: each cluster's `size` nearest other clusters by centroid cosine, closest
    first, or the cluster itself when size is 0 (the authors' `_create_cluster_to_nearby_clusters`)."""
    k = len(centroids)
    if size == 0:
        return torch.arange(k)[:, None]
    rows = []
    for start in range(0, k, chunk):
        sims = centroids[start : start + chunk] @ centroids.T
        sims[torch.arange(len(sims)), torch.arange(start, start + len(sims))] = float("-inf")
        rows.append(sims.topk(min(size, k - 1), dim=1).indices)
    return torch.cat(rows)


@torch.no_grad()
def reference_representations(network: nn.Module, view: torch.Tensor) -> torch.Tensor:
    """network(view) in eval mode, without gradient, L2-normalised (float32); the network's mode is restored."""
    training = network.training
    network.eval()
    try:
        y = network(view)
    finally:
        network.train(training)
    return F.normalize(y.float(), dim=1)


class SSPS:
    """The SSPS state of one method (see the module docstring). Not an nn.Module: it holds no parameter and adds
    nothing to the method's state dict; its tensors live on the device of the first batch it sees.

    Args:
        cfg: the `method.ssps` section.
        num_samples: manifest rows.
        positives: number of positive-side embeddings per step (SimCLR 1, DINO one per global view).
        positive_in_reference_space: whether the positives live where the centroids do (`cluster` sampling).
        recordings: (num_samples,) recording index of each manifest row, or None (diagnostics only).
    """

    def __init__(self, cfg: SSPSConfig, num_samples: int, positives: int = 1,
                 positive_in_reference_space: bool = False, recordings: torch.Tensor | None = None):
        if cfg.sampling == "cluster" and not positive_in_reference_space:
            raise ConfigError("method.ssps.sampling: 'cluster' puts a k-means centroid of representations in place "
                              "of the positive, which needs the positives in the representation space (simclr "
                              "without projector); use kmeans-repr or knn")
        self.cfg = cfg
        self.num_samples = num_samples
        self.positives = positives
        self.recordings = None if recordings is None else torch.as_tensor(recordings, dtype=torch.long)
        self.epoch = 0
        self.clustered_epoch = -1
        # k-means state (every rank)
        self.assignments: torch.Tensor | None = None  # (N,) cluster of each manifest row, -1: not embedded
        self.centroids: torch.Tensor | None = None  # (K, D_ref)
        self.nearby: torch.Tensor | None = None  # (K, max(M, 1))
        # reference bank (rank 0, CPU)
        self.bank: torch.Tensor | None = None  # (N, D_ref) float16
        self.filled = torch.zeros(num_samples, dtype=torch.bool)
        # positive queue (every rank, same content)
        self.queue_rows: torch.Tensor | None = None  # (Q,) manifest row, -1: empty
        self.queue_reference: torch.Tensor | None = None  # (Q, D_ref)
        self.queue_positives: torch.Tensor | None = None  # (V, Q, D_pos)
        self.queue_speakers: torch.Tensor | None = None  # (Q,) speaker labels (diagnostics only)
        self.queue_ptr = 0
        self._pending: tuple[torch.Tensor, ...] | None = None

    # -- epochs ---------------------------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Pseudo-positives replace the positives this epoch."""
        return self.epoch >= self.cfg.start_epoch

    @property
    def collecting(self) -> bool:
        """The bank and the queue are filled this epoch (one epoch before `active`)."""
        return self.epoch >= self.cfg.start_epoch - 1

    def set_epoch(self, epoch: int) -> None:
        """Called at the start of each epoch: clusters the bank once per epoch in the k-means modes."""
        self.epoch = epoch
        if not self.active or self.cfg.sampling == "knn" or epoch == self.clustered_epoch:
            return
        result = self._cluster(epoch) if distributed.is_main() else None
        result = distributed.broadcast_object(result)
        if result is not None:
            self.assignments, self.centroids, self.nearby = result
        self.clustered_epoch = epoch

    def _cluster(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        rows = torch.nonzero(self.filled).flatten()
        if self.bank is None or len(rows) < 2:
            print(f"ssps: {len(rows)} embedded utterances, no clustering for epoch {epoch + 1} "
                  f"(positives stay same-utterance)")
            return None
        k = min(self.cfg.clusters, len(rows))
        if k < self.cfg.clusters:
            print(f"ssps: {len(rows)} embedded utterances < {self.cfg.clusters} clusters; using {k}")
        x = np.ascontiguousarray(self.bank[rows].float().numpy())
        init = None
        if self.centroids is not None and tuple(self.centroids.shape) == (k, x.shape[1]):
            init = self.centroids.cpu().float().numpy()
        labels, centres = spherical_kmeans(x, k, self.cfg.kmeans_iterations, self.cfg.seed + epoch, init)
        assignments = torch.full((self.num_samples,), -1, dtype=torch.long)
        assignments[rows] = torch.from_numpy(labels)
        centroids = F.normalize(torch.from_numpy(np.asarray(centres)).float(), dim=1)
        return assignments, centroids, nearby_clusters(centroids, min(self.cfg.inter_sampling_size, k - 1))

    # -- steps ----------------------------------------------------------------------------------------------------

    def substitute(self, indices: torch.Tensor, reference: torch.Tensor, positives: list[torch.Tensor],
                   labels: torch.Tensor | None = None) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """The positives (each (B, D_pos)) with the pseudo-positives in place for the anchors that got one, and the
        diagnostics. Before `start_epoch`: the positives unchanged and no metric."""
        if not self.active:
            return positives, {}
        device = reference.device
        self._to(device)
        if self.cfg.sampling == "cluster":
            clusters = self._draw_clusters(indices.to(device))
            replaced = clusters >= 0
            out = []
            for z in positives:
                z = z.clone()
                z[replaced] = self.centroids[clusters[replaced]].to(z.dtype)
                out.append(z)
            return out, {"ssps_coverage": replaced.float().mean()}
        rows = self._draw_entries(indices.to(device), reference) if self.queue_rows is not None \
            else torch.full((len(indices),), -1, dtype=torch.long, device=device)
        replaced = rows >= 0
        out = []
        for v, z in enumerate(positives):
            z = z.clone()
            if replaced.any():
                z[replaced] = self.queue_positives[v, rows[replaced]].to(z.dtype)
            out.append(z)
        return out, self._diagnostics(indices.to(device), rows, labels)

    def _draw_clusters(self, indices: torch.Tensor) -> torch.Tensor:
        """(B,) one of the nearby clusters of each anchor's cluster (-1: the anchor was not clustered)."""
        if self.assignments is None:
            return torch.full_like(indices, -1)
        own = self.assignments[indices]
        candidates = self.nearby[own.clamp(min=0)]  # (B, M')
        weights = rank_weights(candidates.shape[1], self.cfg.inter_sampling_prob, self.cfg.inter_sampling_lambda,
                               indices.device).expand(len(indices), -1)
        picks = torch.multinomial(weights, 1)[:, 0]
        drawn = candidates.gather(1, picks[:, None])[:, 0]
        return torch.where(own >= 0, drawn, torch.full_like(drawn, -1))

    def _draw_entries(self, indices: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """(B,) queue entry drawn for each anchor, -1 for none."""
        cfg = self.cfg
        allowed = (self.queue_rows >= 0)[None] & (self.queue_rows[None] != indices[:, None])  # (B, Q)
        if cfg.sampling == "kmeans-repr":
            clusters = self._draw_clusters(indices)
            if self.assignments is None:
                return clusters
            queue_clusters = torch.where(self.queue_rows >= 0, self.assignments[self.queue_rows.clamp(min=0)],
                                         torch.full_like(self.queue_rows, -1))
            allowed &= (queue_clusters[None] == clusters[:, None]) & (clusters[:, None] >= 0)
        scores = (reference.float() @ self.queue_reference.T).masked_fill(~allowed, float("-inf"))
        return draw_ranked(scores, cfg.intra_sampling_size, cfg.intra_sampling_prob, cfg.intra_sampling_lambda)

    @torch.no_grad()
    def _diagnostics(self, indices: torch.Tensor, rows: torch.Tensor,
                     labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        replaced = rows >= 0
        count = replaced.sum().clamp(min=1).float()
        metrics = {"ssps_coverage": replaced.float().mean()}
        if labels is None:
            return metrics
        drawn = rows.clamp(min=0)
        same_speaker = (self.queue_speakers[drawn] == labels.to(indices.device)) & replaced
        metrics["ssps_speaker_accuracy"] = same_speaker.sum() / count
        if self.recordings is not None:
            recordings = self.recordings
            same_recording = (recordings[self.queue_rows[drawn].clamp(min=0)] == recordings[indices]) & replaced
            metrics["ssps_same_recording"] = same_recording.sum() / count
            metrics["ssps_accuracy"] = (same_speaker & ~same_recording).sum() / count
        return metrics

    def stage(self, indices: torch.Tensor, reference: torch.Tensor, positives: list[torch.Tensor],
              labels: torch.Tensor) -> None:
        """Keep this step's rows, references and positive embeddings (every rank's) for `commit`."""
        if not self.collecting:
            self._pending = None
            return
        self._pending = (distributed.gather_no_grad(indices),
                         distributed.gather_no_grad(reference.detach().float()),
                         torch.stack([distributed.gather_no_grad(z.detach()) for z in positives]),
                         distributed.gather_no_grad(labels))

    @torch.no_grad()
    def commit(self) -> None:
        """After a real optimiser step: write the staged step into the bank (rank 0) and the queue."""
        if self._pending is None:
            return
        indices, reference, positives, labels = self._pending
        self._pending = None
        self._to(reference.device)  # a queue loaded from a checkpoint is on the CPU
        if self.cfg.sampling != "knn" and distributed.is_main():
            if self.bank is None:
                self.bank = torch.zeros(self.num_samples, reference.shape[1], dtype=torch.float16)
            rows = indices.cpu()
            self.bank[rows] = reference.cpu().to(torch.float16)
            self.filled[rows] = True
        if self.cfg.sampling == "cluster":
            return  # the positives come from the centroids: no queue
        if self.queue_rows is None:
            size, device = self.cfg.queue_size, reference.device
            self.queue_rows = torch.full((size,), -1, dtype=torch.long, device=device)
            self.queue_reference = torch.zeros(size, reference.shape[1], device=device)
            self.queue_positives = torch.zeros(positives.shape[0], size, positives.shape[2], dtype=positives.dtype,
                                               device=device)
            self.queue_speakers = torch.full((size,), -1, dtype=torch.long, device=device)
        size = self.cfg.queue_size
        n = min(len(indices), size)
        slots = (self.queue_ptr + torch.arange(n, device=self.queue_rows.device)) % size
        self.queue_rows[slots] = indices[-n:].to(self.queue_rows.device)
        self.queue_reference[slots] = reference[-n:].to(self.queue_reference.device)
        self.queue_positives[:, slots] = positives[:, -n:].to(self.queue_positives)
        self.queue_speakers[slots] = labels[-n:].to(self.queue_rows.device)
        self.queue_ptr = (self.queue_ptr + n) % size

    def _to(self, device: torch.device) -> None:
        """Move the per-row tables next to the batch (after a broadcast or a checkpoint load they are on the CPU)."""
        for name in ("assignments", "centroids", "nearby", "recordings", "queue_rows", "queue_reference",
                     "queue_positives", "queue_speakers"):
            value = getattr(self, name)
            if value is not None and value.device != device:
                setattr(self, name, value.to(device))

    # -- checkpoints ----------------------------------------------------------------------------------------------

    _STATE = ("clustered_epoch", "assignments", "centroids", "nearby", "queue_rows", "queue_reference",
              "queue_positives", "queue_speakers", "queue_ptr")

    def state(self) -> dict:
        state = {}
        for name in self._STATE:
            value = getattr(self, name)
            state[name] = value.cpu() if isinstance(value, torch.Tensor) else value
        return state

    def load_state(self, state: dict) -> None:
        for name in self._STATE:
            if name in state:
                setattr(self, name, state[name])
