"""End-to-end behaviour of the trainer on a tiny corpus: learning, resume after SIGKILL, NaN stop, DDP parity."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sslsv.config import load_config
from sslsv.evaluation.validation import build_trainer
from sslsv.training.trainer import Trainer, TrainingError
from tests.tiny_corpus import make_tiny_corpus, tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/simclr/fast_resnet34.yml"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_tiny_corpus(tmp_path_factory.mktemp("data"))


def losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["train/loss"] for line in lines if "train/loss" in json.loads(line)]


def test_trains_checkpoints_and_averages(corpus, tmp_path):
    overrides = {"trainer.epochs": 6, "trainer.lr": 0.003, "augmentation.strategy": "none"}
    config = load_config(CONFIG, tiny_overrides(corpus, tmp_path / "run", **overrides))
    summary = Trainer(config).fit()
    run = tmp_path / "run"
    assert summary["epochs"] == 6 and summary["averaged_epochs"] == 2
    for name in ("config.yml", "model.pt", "model_avg.pt", "metrics.jsonl", "training_summary.json"):
        assert (run / name).exists(), name
    assert len(list((run / "checkpoints").glob("checkpoint_*.pt"))) == config.trainer.keep_checkpoints
    curve = losses(run)
    assert all(torch.isfinite(torch.tensor(curve)))
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3  # it learns something
    saved = load_config(run / "config.yml")
    assert saved.to_dict()["trainer"] == config.to_dict()["trainer"]


def test_restart_drops_the_old_runs_logs(corpus, tmp_path):
    run = tmp_path / "run"
    config = load_config(CONFIG, tiny_overrides(corpus, run, **{"trainer.epochs": 1, "augmentation.strategy": "none"}))
    Trainer(config).fit()
    first = (run / "metrics.jsonl").read_text().splitlines()
    stale = run / "tensorboard" / "events.out.tfevents.stale"
    stale.write_text("")
    Trainer(config, restart=True).fit()
    # One run's lines, not two runs appended: the same count, steps counted from 1 again.
    again = (run / "metrics.jsonl").read_text().splitlines()
    assert len(again) == len(first) and json.loads(again[0])["step"] == json.loads(first[0])["step"]
    assert not stale.exists()


def test_resume_after_sigkill_is_bit_identical(corpus, tmp_path):
    common = tiny_overrides(corpus, "RUN", **{"trainer.epochs": 3, "trainer.checkpoint_every_steps": 1})
    reference = tmp_path / "reference"
    args = [sys.executable, "train.py", str(CONFIG)]
    subprocess.run(args + [o.replace("RUN", str(reference)) for o in common], cwd=ROOT, env=ENV, check=True,
                   capture_output=True)
    killed = tmp_path / "killed"
    process = subprocess.Popen(args + [o.replace("RUN", str(killed)) for o in common], cwd=ROOT, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((killed / "checkpoints").glob("checkpoint_e0001_*.pt"))) == 0:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "model.pt").exists(), "the run finished before it could be killed"
    result = subprocess.run(args + [o.replace("RUN", str(killed)) for o in common], cwd=ROOT, env=ENV,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stdout
    a, b = torch.load(reference / "model.pt"), torch.load(killed / "model.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(corpus, tmp_path, monkeypatch):
    config = load_config(CONFIG, tiny_overrides(corpus, tmp_path / "run", **{"trainer.checkpoint_every_steps": 1}))
    trainer = Trainer(config)
    original = trainer.method.forward
    calls = {"n": 0}

    def poisoned(batch):
        calls["n"] += 1
        out = original(batch)
        if calls["n"] == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(trainer.method, "forward", poisoned)
    with pytest.raises(TrainingError, match="loss is nan at epoch 1, step 3") as error:
        trainer.fit()
    kept = sorted((tmp_path / "run/checkpoints").glob("checkpoint_*.pt"))
    assert kept and kept[-1].name.endswith("_s00000002.pt")
    assert str(kept[-1]) in str(error.value)
    state = torch.load(kept[-1], weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["method"].values() if torch.is_floating_point(v))


def test_torchrun_two_cpu_processes_match_one_process(corpus, tmp_path):
    """Same global batch, same loss curve. Exact equality is out of reach in float32: the rounding of a 2-process
    reduction differs at ~1e-7 and Adam amplifies it for near-zero gradients; tests/training/test_distributed.py
    shows the gradients agree to 1e-10 in float64. A small learning rate keeps the amplification in check."""
    common = tiny_overrides(corpus, "RUN", **{"trainer.epochs": 2, "trainer.lr": 0.0001})
    single, double = tmp_path / "single", tmp_path / "double"
    subprocess.run([sys.executable, "train.py", str(CONFIG)] + [o.replace("RUN", str(single)) for o in common],
                   cwd=ROOT, env=ENV, check=True, capture_output=True)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", "train.py",
         str(CONFIG)] + [o.replace("RUN", str(double)) for o in common],
        cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = losses(single), losses(double)
    assert len(a) == len(b) > 2
    assert torch.allclose(torch.tensor(a), torch.tensor(b), rtol=2e-3, atol=0), (a, b)


def test_bf16_autocast_really_autocasts(corpus, tmp_path):
    config = load_config(CONFIG, tiny_overrides(corpus, tmp_path / "run", **{"trainer.amp": "bf16", "trainer.epochs": 1}))
    trainer = Trainer(config)
    seen = []
    first_conv = trainer.method.encoder.encoder.stem[0]
    first_conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    trainer.fit()
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in trainer.method.parameters())  # master weights stay fp32
    assert all(torch.isfinite(torch.tensor(losses(tmp_path / "run"))))


def test_validation_and_early_stopping(corpus, tmp_path):
    overrides = {"trainer.epochs": 6, "trainer.validate_every": 1, "trainer.validation_trials": "tiny/trials.txt",
                 "trainer.early_stopping_patience": 2, "trainer.early_stopping_min_delta": 101}
    config = load_config(CONFIG, tiny_overrides(corpus, tmp_path / "run", **overrides))
    summary = build_trainer(config).fit()
    # no EER can improve by more than 101 points: the 2nd and 3rd validations are stale -> stop after epoch 3
    assert summary["stopped_early"] and summary["epochs"] == 3
    assert [v["epoch"] for v in summary["validation"]] == [1, 2, 3]
    assert all(0 <= v["val/eer"] <= 100 for v in summary["validation"])
    assert (tmp_path / "run/model_best.pt").exists()


def test_validation_is_a_callable_given_to_the_trainer(corpus, tmp_path):
    overrides = {"trainer.epochs": 2, "trainer.validate_every": 1, "trainer.validation_trials": "tiny/trials.txt"}
    config = load_config(CONFIG, tiny_overrides(corpus, tmp_path / "run", **overrides))
    with pytest.raises(TrainingError, match="no validation function"):
        Trainer(config)
    seen = []

    def validate(model):
        seen.append(model.training)
        return {"val/score": float(len(seen))}

    config.trainer.tracked_metric, config.trainer.tracked_mode = "val/score", "max"
    summary = Trainer(config, validate=validate).fit()
    assert seen == [False, False]  # called once per epoch, on the embedding model in eval mode
    assert [v["val/score"] for v in summary["validation"]] == [1.0, 2.0]


def test_collapse_detector_warns_or_stops(corpus, tmp_path):
    # An impossible threshold (std of L2-normalised embeddings cannot reach 10) makes every step look collapsed.
    common = {"collapse.thresholds.min_embedding_std": 10.0, "collapse.patience_steps": 2, "trainer.epochs": 1}
    config = load_config(CONFIG, tiny_overrides(corpus, tmp_path / "warn", **common))
    Trainer(config).fit()
    records = [json.loads(line) for line in (tmp_path / "warn/metrics.jsonl").read_text().splitlines()]
    assert any("embedding" in r.get("collapse", "") for r in records)
    config = load_config(CONFIG, tiny_overrides(corpus, tmp_path / "stop", **common, **{"collapse.action": "stop"}))
    with pytest.raises(TrainingError, match="collapse.action=stop"):
        Trainer(config).fit()
    assert list((tmp_path / "stop/checkpoints").glob("checkpoint_*_s00000002.pt"))


def test_sslsv_profile_and_diagnostics_commands(corpus, tmp_path):
    from sslsv.cli import main

    assert main(["profile", str(CONFIG)]) == 0
    run = tmp_path / "run"
    Trainer(load_config(CONFIG, tiny_overrides(corpus, run, **{"trainer.epochs": 1}))).fit()
    assert main(["diagnostics", str(run)]) == 0
    assert (run / "diagnostics.png").stat().st_size > 0
    assert main(["diagnostics", str(tmp_path / "missing")]) == 2
