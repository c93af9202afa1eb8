"""Smoke test of the performance benchmarks (benchmarks/bench_gpu.py --device cpu --quick, which drives
benchmarks/bench_train.py's jobs through the trainer's StepTimer) on a tiny corpus laid out as the demo corpus:
every path runs and reports its figures; no timing is asserted."""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from sslsv.config import load_config
from sslsv.training.trainer import StepTimer, Trainer
from tests.tiny_corpus import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.fixture()
def demo_like(tiny_data, tmp_path):
    """The tiny corpus under the names the benchmarks read (demo/train.csv, demo/test.csv, demo/musan, demo/rirs)."""
    root = tmp_path / "data"
    shutil.copytree(tiny_data / "tiny", root / "tiny")
    (root / "demo").mkdir()
    for name in ("musan", "rirs"):
        (root / "demo" / name).symlink_to(root / "tiny" / name)
    for name in ("train.csv", "test.csv"):
        shutil.copy(root / "tiny" / "train.csv", root / "demo" / name)
    return root


def test_bench_gpu_quick_runs_every_job_on_cpu(demo_like, tmp_path):
    import bench_gpu

    out = tmp_path / "gpu.json"
    assert bench_gpu.main(["--device", "cpu", "--quick", "--data-root", str(demo_like), "-o", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["training"]
    assert [(r["job"], r["amp"], r["variant"]) for r in rows] == [
        ("simclr", "none", ""), ("simclr", "bf16", ""), ("simclr", "none", "sync every step"), ("dino", "none", ""),
        ("dino", "none", "activation checkpointing"), ("dino_ecapa", "none", "")]
    for row in rows:
        assert row["samples_per_s"] > 0 and 0.0 <= row["busy_fraction"] <= 1.0 and row["peak_pss_gb"] > 0
        # the forward was split by the hooks: the encoder ran, the method's head and loss took the rest
        assert row["step_s"]["encoder"] > 0 and row["step_s"]["backward"] > 0 and row["step_s"]["optimizer"] > 0
    assert rows[2]["sync_every_steps"] == 1 and rows[0]["sync_every_steps"] > 1
    assert rows[4]["activation_checkpointing"] and not rows[3]["activation_checkpointing"]
    dino = next(r for r in rows if r["job"] == "dino")
    assert dino["step_s"]["after_step"] > 0  # the EMA teacher update is its own phase
    assert result["extraction"]["batched"]["utterances_per_s"] > 0 and result["extraction"]["batch_1"]["wall_s"] > 0
    assert result["extraction"]["batched_bf16_nhwc"]["wall_s"] > 0
    assert result["kmeans"].get("wall_s", 0) > 0


def test_step_timer_is_off_by_default_and_times_each_phase(tiny_data, tmp_path):
    config = load_config(ROOT / "configs/simclr/fast_resnet34.yml",
                         tiny_overrides(tiny_data, tmp_path / "run", **{"trainer.epochs": 1}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: a second thread only waits
    try:
        _train_with_and_without_timer(Trainer(config))
    finally:
        torch.set_num_threads(threads)


def _train_with_and_without_timer(trainer: Trainer) -> None:
    assert trainer.timer is None
    timer = StepTimer(trainer.device)
    trainer.timer = timer
    handles = timer.attach(trainer.method)
    trainer.train_epoch()
    assert len(timer.steps) == trainer.steps_per_epoch
    for step in timer.steps:
        assert {"data_wait", "h2d", "forward", "features", "encoder", "backward", "clip_check", "sync",
                "optimizer", "diagnostics"} <= set(step)
        assert step["features"] + step["encoder"] <= step["forward"]
        assert not any(key.startswith("_") for key in step)  # no hook left open
    for handle in handles:
        handle.remove()
    trainer.timer = None
    before = len(timer.steps)
    trainer.position.epoch += 1
    trainer.position.step_in_epoch = 0
    trainer.train_epoch()
    assert len(timer.steps) == before and torch.isfinite(next(trainer.method.parameters())).all()
