"""trainer.sync_every_steps and trainer.diagnostics_every_steps: the host reads the steps' scalars every N steps (and
at every log step, save and epoch end) with the same logs and weights as a read every step, the non-finite guard
names the exact step and saves nothing from it on, and the SVD diagnostics run only on their steps."""
import json
import math
from pathlib import Path

import pytest
import torch

from sslsv.config import ConfigError, load_config
from sslsv.training.trainer import Trainer, TrainingError
from tests.methods.method_helpers import one_thread  # noqa: F401 - tiny models train fastest on one thread
from tests.tiny_corpus import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/simclr/fast_resnet34.yml"
# 2 epochs of 10 steps (batch 2); a line every 6 steps, a checkpoint every 7, the SVD every 3
COMMON = {"dataset.batch_size": 2, "trainer.max_steps_per_epoch": 10, "augmentation.strategy": "none",
          "trainer.log_every_steps": 6, "trainer.checkpoint_every_steps": 7, "trainer.diagnostics_every_steps": 3,
          "trainer.keep_checkpoints": 10}
TIMING = {"time", "elapsed_s", "train/samples_per_s"}
# reads every 4 steps and at each epoch's end only
READ_EVERY_4 = {"trainer.sync_every_steps": 4, "trainer.log_every_steps": 100, "trainer.checkpoint_every_steps": 0}


def tiny_trainer(data: Path, run: Path, **overrides) -> Trainer:
    return Trainer(load_config(CONFIG, tiny_overrides(data, run, **{**COMMON, **overrides})))


def recorded_fit(data: Path, run: Path, sync: int) -> dict:
    """Train with trainer.sync_every_steps=`sync`, recording the global steps of each host read and each step's
    metrics as the method returned them."""
    trainer = tiny_trainer(data, run, **{"trainer.sync_every_steps": sync})
    reads, forwards = [], {}
    read, forward = trainer._read_pending, trainer.method.forward

    def counting_read(pending):
        reads.append([p.global_step for p in pending])
        return read(pending)

    def recording_forward(batch):
        output = forward(batch)
        forwards[trainer.position.global_step + 1] = {k: float(v) for k, v in output.metrics.items()}
        return output

    trainer._read_pending, trainer.method.forward = counting_read, recording_forward
    trainer.fit()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"reads": reads, "forwards": forwards, "lines": lines, "trainer": trainer}


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("sync")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: set up before the one_thread fixture applies
    try:
        return {sync: recorded_fit(tiny_data, root / f"n{sync}", sync) for sync in (1, 4)}
    finally:
        torch.set_num_threads(threads)


def test_reading_every_4_steps_logs_and_trains_exactly_as_every_step(runs):
    every, grouped = runs[1]["lines"], runs[4]["lines"]
    assert [line["step"] for line in grouped] == [6, 10, 12, 18, 20]
    strip = lambda line: {k: v for k, v in line.items() if k not in TIMING}  # noqa: E731
    assert [strip(line) for line in grouped] == [strip(line) for line in every]  # floats compared exactly
    a, b = (runs[n]["trainer"].layout.model for n in (1, 4))
    x, y = torch.load(a), torch.load(b)
    assert all(torch.equal(x[k], y[k]) for k in x)


def test_the_host_reads_once_per_4_steps_unless_a_line_or_save_is_due(runs):
    assert runs[1]["reads"] == [[step] for step in range(1, 21)]
    # reads: multiples of 4, log lines (6, 12, 18), checkpoints (7, 14), the epochs' last steps (10, 20)
    assert runs[4]["reads"] == [[1, 2, 3, 4], [5, 6], [7], [8], [9, 10], [11, 12], [13, 14], [15, 16], [17, 18],
                                [19, 20]]
    # the checkpoints every 7 steps were written, each right after a read
    names = sorted(path.name for path in (runs[4]["trainer"].checkpoint_dir).glob("checkpoint_*.pt"))
    assert names == ["checkpoint_e0000_s00000007.pt", "checkpoint_e0001_s00000010.pt",
                     "checkpoint_e0001_s00000014.pt", "checkpoint_e0002_s00000020.pt"]


def test_effective_rank_only_on_due_steps_and_logged_as_their_mean(runs):
    forwards, lines = runs[4]["forwards"], {line["step"]: line for line in runs[4]["lines"]}
    due = [step for step, metrics in forwards.items() if "effective_rank" in metrics]
    assert due == [3, 6, 9, 10, 12, 15, 18, 20]  # every 3 steps, every log step (6, 12, 18), each epoch's end
    assert all("embedding_std" in metrics for metrics in forwards.values())
    for step, window in ((6, range(1, 7)), (10, range(7, 11)), (12, range(11, 13)), (18, range(13, 19))):
        ranks = [forwards[s]["effective_rank"] for s in window if s in due]
        assert lines[step]["train/effective_rank"] == sum(ranks) / len(ranks)  # not averaged with zeros
        stds = [forwards[s]["embedding_std"] for s in window]
        assert lines[step]["train/embedding_std"] == pytest.approx(sum(stds) / len(stds), rel=1e-12)
    # outside the trainer's steps, forward gives every metric
    assert runs[4]["trainer"].method.diagnostics_due is True


def poison_loss_at(trainer: Trainer, step: int) -> None:
    forward = trainer.method.forward

    def poisoned(batch):
        output = forward(batch)
        if trainer.position.global_step + 1 == step:
            output.loss = output.loss * math.nan
        return output

    trainer.method.forward = poisoned


def checkpoint_steps(run: Path) -> list[int]:
    return sorted(int(path.stem.split("_s")[1]) for path in (run / "checkpoints").glob("checkpoint_*.pt"))


def test_a_nan_loss_read_later_names_its_step_and_nothing_from_it_is_saved(tiny_data, tmp_path):
    run = tmp_path / "run"
    trainer = tiny_trainer(tiny_data, run, **{"trainer.sync_every_steps": 4, "trainer.log_every_steps": 100,
                                              "trainer.checkpoint_every_steps": 5})
    poison_loss_at(trainer, 6)  # reads at 4, 5 (checkpoint) and 8: found at 8
    with pytest.raises(TrainingError, match=r"^loss is nan at epoch 1, step 6 \(global step 6\); training stopped at "
                                            r"global step 8 \(the host reads .* trainer\.sync_every_steps=4 steps\) "
                                            r"and nothing from global step 6 on was saved, the last good checkpoint "
                                            r"is kept: .*checkpoint_e0000_s00000005\.pt"):
        trainer.fit()
    assert checkpoint_steps(run) == [5]
    assert not (run / "model.pt").exists() and not list(run.glob("weights_*.pt"))


def test_a_failure_after_an_unread_nan_step_reports_the_nan_step(tiny_data, tmp_path):
    trainer = tiny_trainer(tiny_data, tmp_path / "run", **READ_EVERY_4)
    poison_loss_at(trainer, 5)
    forward = trainer.method.forward

    def failing(batch):  # what NaN weights can do to a method: fail in the forward of a later step
        if trainer.position.global_step + 1 == 7:
            raise RuntimeError("linalg error")
        return forward(batch)

    trainer.method.forward = failing
    with pytest.raises(TrainingError, match=r"^loss is nan at epoch 1, step 5 \(global step 5\); training stopped at "
                                            r"global step 6 "):
        trainer.fit()


@pytest.mark.parametrize("step, read_with", [(6, 8), (8, 8)])
def test_non_finite_gradients_name_their_step(tiny_data, tmp_path, step, read_with):
    trainer = tiny_trainer(tiny_data, tmp_path / "run", **READ_EVERY_4)  # reads at 4, 8 and 10
    name, param = next(iter(trainer.method.named_parameters()))
    param.register_hook(lambda grad: grad * math.inf if trainer.position.global_step + 1 == step else grad)
    with pytest.raises(TrainingError) as error:
        trainer.fit()
    message = str(error.value)
    assert message.startswith("gradients are not finite (")
    assert f") at epoch 1, step {step} (global step {step}); training stopped " in message
    if step == read_with:  # read at its own step: named, and stopped before its optimiser step as with N = 1
        assert f"({name}) at" in message and "before the optimiser step" in message
    else:  # read 2 steps later: its gradients are gone
        assert "parameter names unknown" in message and f"at global step {read_with}" in message
        assert "nothing from global step 6 on was saved" in message
    assert checkpoint_steps(tmp_path / "run") == [] and "no checkpoint had been written yet" in message


def test_both_keys_are_checked():
    for key in ("trainer.sync_every_steps", "trainer.diagnostics_every_steps"):
        with pytest.raises(ConfigError, match=rf"^{key}: must be at least 1"):
            load_config(CONFIG, [f"{key}=0"])


def test_a_rule_is_judged_only_on_the_steps_that_report_its_signal():
    from sslsv.config import CollapseConfig
    from sslsv.methods.collapse import DEFAULT_RULES
    from sslsv.training.diagnostics import CollapseDetector

    detector = CollapseDetector(CollapseConfig(patience_steps=2), DEFAULT_RULES)
    healthy, rank_one = {"embedding_std": 0.05}, {"embedding_std": 0.05, "effective_rank": 1.0}
    assert [detector.check(step, rank_one if step % 3 == 0 else healthy) for step in range(1, 6)] == [None] * 5
    # the streak of step 3 was kept through steps 4 and 5 (no effective_rank there), not reset
    assert "effective rank 1.00 < 1.5" in detector.check(6, rank_one)
    assert detector.check(7, {"embedding_std": 0.05, "effective_rank": 9.0}) is None and detector.streaks == {}
