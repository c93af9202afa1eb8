"""Compute of one training sample: the conv/linear MACs of every forward pass a method makes for it.

The review's Table 12 (Lepage & Dehak, "Self-Supervised Learning for Speaker Recognition: A study and review",
2026, arXiv:2602.10829) reports FLOPs per training sample with all passes: the student on every view, plus the
teacher (DINO, BYOL) or key encoder (MoCo) on the views it sees, plus projection heads. Counting the student
alone gives half of MoCo's and BYOL's figure and two thirds of DINO's. This module runs the method's real
training forward on a small random batch with MAC-counting hooks on all its sub-modules (the convention of
sslsv.encoders.profile: Conv/Linear layers, 1 MAC = 2 FLOPs) and divides by the batch size.
"""
from __future__ import annotations

import torch

from sslsv.config import Config
from sslsv.encoders.profile import counting_macs
from sslsv.methods.base import Batch, TrainingInfo
from sslsv.training.trainer import build_method

VOXCELEB2_SPEAKERS = 5994  # classifier rows of label-using methods when no manifest is given


def training_macs_per_sample(config: Config, batch_size: int = 4, num_speakers: int = VOXCELEB2_SPEAKERS) -> dict:
    """MACs of one training sample's forward passes for `config` (method + encoder + views).

    Returns dict(macs_per_sample, student_macs_per_sample, audio_seconds): the second counts only the embedding
    model on every view (what an encoder profile times the audio length gives), for comparison.
    """
    torch.manual_seed(0)
    info = TrainingInfo(num_speakers=num_speakers, num_samples=max(batch_size, 1024), steps_per_epoch=1, epochs=1)
    method = build_method(config, info).train()
    batch_size = max(batch_size, method.min_batch_size())
    rate = config.features.sample_rate
    views = [torch.randn(batch_size, int(round(group.seconds * rate)))
             for group in config.dataset.views for _ in range(group.count)]
    labels = torch.arange(batch_size) % num_speakers
    method.on_epoch_start(0)
    with torch.no_grad():
        with counting_macs(method) as total:
            method(Batch(views, labels, torch.arange(batch_size)))
        with counting_macs(method.embedding_model()) as student:
            for view in views:
                method.embedding_model()(view)
    return {
        "macs_per_sample": total[0] / batch_size,
        "student_macs_per_sample": student[0] / batch_size,
        "audio_seconds": sum(group.count * group.seconds for group in config.dataset.views),
    }
