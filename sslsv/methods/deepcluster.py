"""DeepCluster (Caron et al., 2018, arXiv 1807.05520; v2 as in SwAV, arXiv 2006.09882) for speaker verification.

Review (Lepage & Dehak, 2026, arXiv:2602.10829), section 2.2.1, Eq. (4):

    L_DeepCluster = -1/B sum_i log( l(z_i, c_{c_i}) / sum_{k=1..K} l(z_i, c_k) ),   l(a, b) = exp(cos(a, b) / tau)

c_k: prototype of cluster k, c_i: cluster assigned to sample i by k-means "at the beginning of each epoch on all
embeddings from the previous epoch". Symmetric (both views are classified), and "the clustering is repeated
multiple times ... with different sets of pseudo-labels from different views": clustering j (K_j clusters, one
classification head each) uses the embeddings of view j mod 2 and both views are trained on its labels; the loss
is averaged over clusterings and views. Settings (section 4.3): tau = 0.1, K = 3000 (x 3 clusterings, as
DeepCluster-v2); projector 2048-2048-512.

How it works here:
- Memory bank: the L2-normalised embeddings of both views, indexed by `batch.indices` (manifest rows), written
  after each loss (`update_memory_bank`, no-grad; rows gathered from every rank). It lives on the CPU of rank 0
  only, in float16 (2 x N x D x 2 bytes: 2.2 GB for VoxCeleb2 at D = 512), and is not checkpointed: after a resume
  the next clustering uses the rows seen since the resume (rows never seen keep stale or random labels).
- `on_epoch_start`: rank 0 runs spherical k-means (faiss.Kmeans, `kmeans_iterations`) on the bank rows filled so
  far, assigns every filled row to its nearest centroid, and broadcasts labels and centroids; each head's weights
  are reset to its normalised centroids (prototypes c_k; trainable within the epoch, as DeepCluster-v2).
- Epoch 0 (empty bank), or fewer filled rows than clusters: random labels (a fixed seed, identical on all ranks)
  and the heads' random initial prototypes. Rows that have never been embedded keep random labels.
- Labels and centroids are checkpointed through `extra_state`, so a resumed epoch trains on the same labels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslsv.config import ConfigError, require
from sslsv.methods.base import Batch, Method, StepOutput, TrainingInfo, encode_views, two_views
from sslsv.methods.collapse import CLUSTER_ENTROPY, DEFAULT_RULES
from sslsv.methods.heads import ProjectorConfig, build_projector
from sslsv.registry import METHODS
from sslsv import distributed
from sslsv.methods.signals import cluster_usage_entropy, method_metrics


@dataclass
class DeepClusterConfig:
    temperature: float = 0.1  # tau, review section 4.3
    num_clusters: list[int] = field(default_factory=lambda: [3000, 3000, 3000])  # K per clustering
    kmeans_iterations: int = 10
    kmeans_restarts: int = 1  # faiss nredo: best of several k-means runs
    seed: int = 0
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError("method.temperature: must be positive")
        if not self.num_clusters or min(self.num_clusters) < 2:
            raise ConfigError("method.num_clusters: needs at least one clustering of at least 2 clusters")
        require(self.kmeans_iterations >= 1, "method.kmeans_iterations", "at least 1", self.kmeans_iterations)
        require(self.kmeans_restarts >= 1, "method.kmeans_restarts", "at least 1", self.kmeans_restarts)
        require(self.seed >= 0, "method.seed", ">= 0", self.seed)


class DeepClusterLoss(nn.Module):
    """Eq. (4): cross-entropy of the cosine logits to the prototypes.

    Args:
        z: (B, D) embeddings; prototypes: (K, D); assignments: (B,) cluster indices.
    Returns: scalar loss.
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature

    def forward(self, z: torch.Tensor, prototypes: torch.Tensor, assignments: torch.Tensor) -> torch.Tensor:
        logits = F.normalize(z, dim=1) @ F.normalize(prototypes, dim=1).T / self.temperature  # (B, K)
        return F.cross_entropy(logits, assignments)


def spherical_kmeans(x: np.ndarray, k: int, iterations: int, seed: int, restarts: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """faiss spherical k-means of x (n, D) float32 -> (labels (n,), unit centroids (k, D))."""
    import faiss

    kmeans = faiss.Kmeans(x.shape[1], k, niter=iterations, spherical=True, seed=seed, verbose=False,
                          min_points_per_centroid=1, nredo=restarts)
    kmeans.train(x)
    _, labels = kmeans.index.search(x, 1)
    return labels[:, 0].astype(np.int64), kmeans.centroids


@METHODS.register("deepcluster", config=DeepClusterConfig)
class DeepCluster(Method):
    """DeepCluster(-v2): k-means pseudo-labels each epoch, cosine classifier heads (review Eq. 4); K 3 x 3000."""

    collapse_rules = DEFAULT_RULES + (CLUSTER_ENTROPY,)

    def __init__(self, encoder, cfg: DeepClusterConfig, info: TrainingInfo):
        super().__init__(encoder)
        self.cfg = cfg
        self.projector, dim = build_projector(cfg.projector, encoder.embed_dim)
        self.heads = nn.ModuleList(nn.Linear(dim, k, bias=False) for k in cfg.num_clusters)
        self.loss = DeepClusterLoss(cfg.temperature)
        self.num_samples = info.num_samples
        self.bank: torch.Tensor | None = None  # (2, N, D) float16 on CPU, rank 0 only
        self.filled = torch.zeros(self.num_samples, dtype=torch.bool)
        self.assignments = self._random_assignments()  # (C, N) on CPU
        self.assignments_epoch = -1
        self.entropy_bounds = {}

    def _random_assignments(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.cfg.seed)
        return torch.stack([torch.randint(k, (self.num_samples,), generator=g) for k in self.cfg.num_clusters])

    def on_epoch_start(self, epoch: int) -> None:
        if epoch == self.assignments_epoch:
            return  # resumed within an epoch: keep its checkpointed labels
        result = None
        if distributed.is_main():
            result = self._cluster(epoch)
        result = distributed.broadcast_object(result)
        if result is not None:
            assignments, centroids = result
            self.assignments = assignments
            with torch.no_grad():
                for head, c in zip(self.heads, centroids):
                    head.weight.copy_(F.normalize(c.to(head.weight), dim=1))
        self.assignments_epoch = epoch

    def _cluster(self, epoch: int) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
        """k-means of the bank on rank 0; None (keep the current labels) when it cannot run yet."""
        rows = torch.nonzero(self.filled).flatten()
        if self.bank is None or len(rows) < max(self.cfg.num_clusters):
            if epoch > 0:
                print(f"deepcluster: {len(rows)} embedded utterances < {max(self.cfg.num_clusters)} clusters; "
                      f"keeping the previous labels for epoch {epoch + 1}")
            return None
        assignments, centroids = self.assignments.clone(), []
        for j, k in enumerate(self.cfg.num_clusters):
            x = self.bank[j % 2, rows].float().numpy()
            labels, centres = spherical_kmeans(np.ascontiguousarray(x), k, self.cfg.kmeans_iterations,
                                               self.cfg.seed + 1000 * epoch + j, self.cfg.kmeans_restarts)
            assignments[j, rows] = torch.from_numpy(labels)
            centroids.append(torch.from_numpy(centres))
        return assignments, centroids

    def forward(self, batch: Batch) -> StepOutput:
        x1, x2 = two_views(batch, "deepcluster")
        z1, z2 = encode_views(lambda x: self.projector(self.encoder(x)), [x1, x2])
        labels = self.assignments[:, batch.indices.cpu()].to(z1.device)  # (C, B)
        losses = [self.loss(z, head.weight, labels[j]) for j, head in enumerate(self.heads) for z in (z1, z2)]
        loss = torch.stack(losses).mean()
        self.update_memory_bank(batch.indices, z1, z2)
        with torch.no_grad():
            predicted = (F.normalize(z1, dim=1) @ F.normalize(self.heads[0].weight, dim=1).T).argmax(dim=1)
        metrics = {"cluster_entropy": cluster_usage_entropy(predicted, self.cfg.num_clusters[0]),
                   **method_metrics(torch.cat([z1, z2]), self.diagnostics_due)}
        return StepOutput(loss, metrics)

    @torch.no_grad()
    def update_memory_bank(self, indices: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> None:
        """Store the normalised embeddings of both views of this step (every rank's rows) on rank 0."""
        indices = distributed.gather_no_grad(indices)
        z = torch.stack([distributed.gather_no_grad(F.normalize(z1.detach(), dim=1)),
                         distributed.gather_no_grad(F.normalize(z2.detach(), dim=1))])  # (2, N_b, D)
        if not distributed.is_main():
            return
        if self.bank is None:
            self.bank = torch.zeros(2, self.num_samples, z.shape[2], dtype=torch.float16)
        rows = indices.cpu()
        self.bank[:, rows] = z.cpu().to(torch.float16)
        self.filled[rows] = True

    def extra_state(self) -> dict:
        return {"assignments": self.assignments, "assignments_epoch": self.assignments_epoch}

    def load_extra_state(self, state: dict) -> None:
        if "assignments" in state:
            self.assignments = state["assignments"]
            self.assignments_epoch = int(state["assignments_epoch"])
