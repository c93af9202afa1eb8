"""Rerunning a run: metrics.jsonl without duplicate lines, leftover temporaries removed, a corrupt newest checkpoint
skipped, a finished run left alone, and one training per run directory."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from sslsv.cli.train import main as train_main
from sslsv.config import load_config
from sslsv.runs import RunError, RunLock
from sslsv.training.trainer import Trainer
from tests.tiny_corpus import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/simclr/fast_resnet34.yml"
COMMON = {"trainer.epochs": 2, "trainer.checkpoint_every_steps": 1}  # 3 steps per epoch on the tiny corpus


def overrides(data: Path, run: Path) -> list[str]:
    return tiny_overrides(data, run, **COMMON)


def tiny_trainer(data: Path, run: Path, **kwargs) -> Trainer:
    return Trainer(load_config(CONFIG, overrides(data, run)), **kwargs)


def losses_by_step(run: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train/loss"]) for r in records]


def snapshot(run: Path) -> dict[str, int]:
    """Every file of the run and its modification time."""
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    tiny_trainer(tiny_data, run).fit()
    return run


def test_resume_after_a_kill_during_a_save(tiny_data, finished, tmp_path, capsys):
    run = tmp_path / "run"
    trainer = tiny_trainer(tiny_data, run)
    original = trainer.method.forward

    def killed_at_step_5(batch):
        if trainer.position.global_step == 4:
            raise KeyboardInterrupt
        return original(batch)

    trainer.method.forward = killed_at_step_5
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    # As if the kill had come while step 4's checkpoint was written over a previous file, and a metrics line half
    # written: a damaged newest checkpoint, a temporary, a cut line.
    newest = run / "checkpoints/checkpoint_e0001_s00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    temporary = run / "checkpoints/.checkpoint_e0001_s00000005.pt.k2j4h5g6.tmp"
    temporary.write_bytes(b"partial")
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"epoch": 2, "step": 5, "lo')
    capsys.readouterr()

    tiny_trainer(tiny_data, run).fit()
    out = capsys.readouterr().out
    assert f"removed {temporary}" in out and not temporary.exists()
    assert f"warning: {newest} is unreadable" in out
    assert "resuming from" in out and "checkpoint_e0001_s00000003.pt (epoch 2, step 0)" in out
    # one line per step, with the values an uninterrupted run logs, and the same final weights
    assert losses_by_step(run) == losses_by_step(finished) and [s for s, _ in losses_by_step(run)] == [1, 2, 3, 4, 5, 6]
    a, b = torch.load(run / "model.pt"), torch.load(finished / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_finished_run_is_not_trained_again(tiny_data, finished, capsys):
    before = snapshot(finished)
    capsys.readouterr()
    assert train_main([str(CONFIG), *overrides(tiny_data, finished)]) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"run already finished (2 epochs, 6 steps): {finished}; use --restart to train again"
    assert snapshot(finished) == before


def test_a_run_killed_while_writing_its_final_files_writes_them(tiny_data, finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "model.pt").unlink()
    (run / "training_summary.json").unlink()
    logged = (run / "metrics.jsonl").read_text()
    summary = tiny_trainer(tiny_data, run).fit()
    assert summary["epochs"] == 2 and summary["steps"] == 6 and not summary.get("already_finished")
    assert (run / "metrics.jsonl").read_text() == logged  # nothing trained again
    a, b = torch.load(run / "model.pt"), torch.load(finished / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_locked_run_is_refused_before_anything_is_written(tiny_data, finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = snapshot(run)
    trainer = tiny_trainer(tiny_data, run, restart=True)
    refused = f"in use by another training \\(pid {os.getpid()} "
    with RunLock(run):  # another training (this process) holds the run
        with pytest.raises(RunError, match=refused):
            tiny_trainer(tiny_data, run)  # at once, before the manifest is checked
        with pytest.raises(RunError, match=refused):
            trainer.fit()  # taken after this trainer was built
        assert {k: v for k, v in snapshot(run).items() if k != "train.lock"} == before  # --restart deleted nothing
