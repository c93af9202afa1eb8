"""Supervised baseline: AAM-softmax on speaker labels (Deng et al., ArcFace, 2019; review section 3.2).

Review Eq. (12):

    L_Sup = -1/B sum_i log( l+(y_i, w_{l_i}) / (l+(y_i, w_{l_i}) + sum_{c != l_i} l-(y_i, w_c)) )
    l+(a, b) = exp(s cos(theta_ab + m)),  l-(a, b) = exp(s cos(theta_ab))

with s = 30 and m = 0.2 (section 4.3). The projector is discarded. One deviation, shared by every public
implementation: where theta + m > pi, cos(theta + m) stops decreasing, so the target logit uses
cos(theta) - m sin(m) there instead (keeps the loss monotonic in theta). Also used for pseudo-label rounds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslsv.config import ConfigError
from sslsv.methods.base import Batch, Method, StepOutput, TrainingInfo
from sslsv.registry import METHODS


@dataclass
class SupervisedConfig:
    scale: float = 30.0  # s in Eq. (12)
    margin: float = 0.2  # m in Eq. (12)

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise ConfigError("method.scale: must be positive")
        if not 0 <= self.margin < math.pi / 2:
            raise ConfigError("method.margin: must be in [0, pi/2)")


class AAMSoftmaxLoss(nn.Module):
    """Additive angular margin softmax, Eq. (12).

    Args:
        y: representations (B, D); labels: (B,) class indices in [0, num_classes).
    Returns:
        (loss scalar, top-1 accuracy on the margin-free logits).
    """

    def __init__(self, embed_dim: int, num_classes: int, scale: float = 30.0, margin: float = 0.2):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        nn.init.xavier_normal_(self.weight, gain=1)
        self.scale, self.margin = scale, margin

    def forward(self, y: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cosine = F.linear(F.normalize(y.float(), dim=1), F.normalize(self.weight.float(), dim=1))  # (B, C)
        sine = (1.0 - cosine.pow(2)).clamp(min=1e-12).sqrt()
        cos_plus_margin = cosine * math.cos(self.margin) - sine * math.sin(self.margin)  # cos(theta + m)
        # theta + m > pi  <=>  cos(theta) < cos(pi - m): keep the target logit decreasing in theta there
        cos_plus_margin = torch.where(
            cosine > math.cos(math.pi - self.margin), cos_plus_margin, cosine - math.sin(math.pi - self.margin) * self.margin
        )
        target = F.one_hot(labels, cosine.shape[1]).bool()
        logits = self.scale * torch.where(target, cos_plus_margin, cosine)
        loss = F.cross_entropy(logits, labels)
        accuracy = (cosine.argmax(dim=1) == labels).float().mean()
        return loss, accuracy.detach()


@METHODS.register("supervised", config=SupervisedConfig)
class Supervised(Method):
    """Supervised AAM-softmax baseline (review Eq. 12; s=30, m=0.2) on manifest labels."""

    uses_labels = True

    def __init__(self, encoder, cfg: SupervisedConfig, info: TrainingInfo):
        super().__init__(encoder)
        if info.num_speakers < 2:
            raise ConfigError(f"method.name: supervised training needs at least 2 speakers, the manifest has {info.num_speakers}")
        self.classifier = AAMSoftmaxLoss(encoder.embed_dim, info.num_speakers, cfg.scale, cfg.margin)

    def forward(self, batch: Batch) -> StepOutput:
        # Every view is a labelled example; views of equal length share one encoder pass.
        ys, labels = [], []
        for view in batch.views:
            ys.append(self.encoder(view))
            labels.append(batch.labels)
        loss, accuracy = self.classifier(torch.cat(ys), torch.cat(labels))
        return StepOutput(loss, {"accuracy": accuracy})
