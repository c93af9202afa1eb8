"""Training cost per sample counts every forward pass, and matches the review's Table 12 FLOPs (within 5 %)."""
from __future__ import annotations

import pytest
import torch

from sslsv.config import load_config
from sslsv.training.cost import training_macs_per_sample

# Table 12 of Lepage & Dehak (arXiv:2602.10829): GFLOPs per training sample; 1 MAC = 2 FLOPs.
TABLE_12_GFLOPS = {
    "configs/supervised/fast_resnet34.yml": 0.91,
    "configs/simclr/fast_resnet34.yml": 1.80,
    "configs/moco/fast_resnet34.yml": 3.66,  # query + key encoder on both views
    "configs/dino/ecapa.yml": 90.87,  # student on 2x4 s + 4x2 s, teacher on 2x4 s, heads
}


@pytest.mark.parametrize("path", sorted(TABLE_12_GFLOPS))
def test_training_flops_match_table_12(path):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        figures = training_macs_per_sample(load_config(path, []), batch_size=2)
    finally:
        torch.set_num_threads(threads)
    gflops = 2 * figures["macs_per_sample"] / 1e9
    assert gflops == pytest.approx(TABLE_12_GFLOPS[path], rel=0.05)


def test_teacher_and_key_encoder_passes_are_counted():
    tiny = ["encoder.base_width=4", "encoder.embed_dim=16", "features.n_mels=24"]
    simclr = training_macs_per_sample(load_config("configs/simclr/fast_resnet34.yml", tiny), batch_size=2)
    moco = training_macs_per_sample(load_config("configs/moco/fast_resnet34.yml", tiny), batch_size=2)
    # the same encoder and views: MoCo's key encoder adds a second full pass over both views
    assert moco["student_macs_per_sample"] == simclr["student_macs_per_sample"]
    assert moco["macs_per_sample"] >= 2 * moco["student_macs_per_sample"]
    assert simclr["macs_per_sample"] < 1.5 * simclr["student_macs_per_sample"]
