"""Preemption: SIGTERM / SIGUSR1 save a checkpoint at the next step boundary, stop with exit status 75, and the
resumed run ends bit-identical to an uninterrupted one."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from sslsv.cli.errors import PREEMPTED_EXIT_CODE, run_command
from sslsv.config import load_config
from sslsv.training.trainer import Preempted, PreemptionWatch, Trainer
from tests.tiny_corpus import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/simclr/fast_resnet34.yml"
COMMON = {"trainer.epochs": 2, "trainer.lr": 0.003}  # 3 steps per epoch on the tiny corpus


def tiny_trainer(data: Path, run: Path, **overrides) -> Trainer:
    return Trainer(load_config(CONFIG, tiny_overrides(data, run, **{**COMMON, **overrides})))


def signal_at_step(trainer: Trainer, step: int, number: int) -> None:
    """Send `number` to this process during the forward pass of global step `step` (1-based)."""
    original = trainer.method.forward

    def forward(batch):
        if trainer.position.global_step + 1 == step:
            os.kill(os.getpid(), number)
        return original(batch)

    trainer.method.forward = forward


def assert_same_weights(a: Path, b: Path) -> None:
    x, y = torch.load(a), torch.load(b)
    assert x.keys() == y.keys()
    assert all(torch.equal(x[k], y[k]) for k in x), a.name


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("reference") / "run"
    tiny_trainer(tiny_data, run).fit()
    return run


@pytest.mark.parametrize("number, step", [(signal.SIGTERM, 2), (getattr(signal, "SIGUSR1", signal.SIGTERM), 3)])
def test_signal_saves_the_step_and_resume_is_bit_identical(tiny_data, reference, tmp_path, capsys, number, step):
    run = tmp_path / "run"
    sparse_logs = {"trainer.log_every_steps": 10}  # no line due at the signal's step
    trainer = tiny_trainer(tiny_data, run, **sparse_logs)
    signal_at_step(trainer, step, number)
    before = signal.getsignal(number)
    with pytest.raises(Preempted) as stopped:
        trainer.fit()
    assert signal.getsignal(number) is before  # handlers restored
    name = signal.Signals(number).name
    expected = f"preempted by {name} at epoch 1 step {step}: checkpoint saved to {stopped.value.checkpoint}; " \
               f"rerun the same command to resume"
    assert str(stopped.value) == expected and expected in capsys.readouterr().err
    assert stopped.value.checkpoint.name == f"checkpoint_e0000_s{step:08d}.pt"  # the step in progress, completed
    assert not (run / "model.pt").exists() and not (run / "train.lock").exists()
    # the steps since the last line are logged: the checkpoint is at the last logged step
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == step

    tiny_trainer(tiny_data, run, **sparse_logs).fit()
    for name in ("model.pt", "model_avg.pt"):
        assert_same_weights(reference / name, run / name)


def test_signal_during_the_epoch_end_stops_after_its_checkpoint(tiny_data, tmp_path):
    def validate(model):  # the epoch's end: validation, then the epoch checkpoint
        os.kill(os.getpid(), signal.SIGTERM)
        return {"val/eer": 50.0}

    config = load_config(CONFIG, tiny_overrides(tiny_data, tmp_path / "run", **COMMON, **{
        "trainer.validate_every": 1, "trainer.validation_trials": "tiny/trials.txt"}))
    with pytest.raises(Preempted, match="at epoch 1 step 3") as stopped:
        Trainer(config, validate=validate).fit()
    assert stopped.value.checkpoint.name == "checkpoint_e0001_s00000003.pt"


def test_watch_restores_handlers_and_stays_off_outside_the_main_thread():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionWatch() as watch:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # Python runs the handler between bytecodes of the main thread
        assert watch.received == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before

    def in_thread():
        with PreemptionWatch():  # signal.signal would raise ValueError here
            assert signal.getsignal(signal.SIGTERM) is before

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()


def test_run_command_exits_75_on_preemption():
    def preempted():
        raise Preempted("preempted by SIGTERM ...", Path("checkpoint.pt"))

    assert PREEMPTED_EXIT_CODE == 75 and run_command(preempted) == 75


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_sigterm_to_one_rank_and_its_loader_worker_stops_every_rank_at_the_same_step(tiny_data, tmp_path):
    """Two processes as torchrun starts them (RANK, WORLD_SIZE, MASTER_*). SIGTERM goes to rank 1's process group,
    as scancel or `kill -TERM -PGID` send it: its DataLoader worker must not die, and the stop request travels
    with the step's all-reduce: rank 0 saves the checkpoint and says so, rank 1 prints nothing, both exit 75."""
    run = tmp_path / "run"
    overrides = tiny_overrides(tiny_data, run, **{"trainer.epochs": 200, "trainer.checkpoint_every_steps": 1,
                                                  "dataset.num_workers": 1})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    processes = [subprocess.Popen([sys.executable, "train.py", str(CONFIG), *overrides], cwd=ROOT, text=True,
                                  env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}, start_new_session=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for rank in (0, 1)]
    deadline = time.time() + 120
    while time.time() < deadline and not list((run / "checkpoints").glob("checkpoint_*.pt")):
        time.sleep(0.05)
    os.killpg(processes[1].pid, signal.SIGTERM)  # mid-epoch (a checkpoint every step): the worker is alive
    (out0, err0), (out1, err1) = (p.communicate(timeout=120) for p in processes)
    assert [p.returncode for p in processes] == [PREEMPTED_EXIT_CODE] * 2, err0[-2000:] + err1[-2000:]
    assert "preempted by a signal to another process of the run at epoch" in err0
    assert "rerun the same command to resume" in err0 and "Traceback" not in err0
    assert out1 == "" and err1 == ""
    saved = Path(err0.split("checkpoint saved to ")[1].split(";")[0])
    assert saved == sorted((run / "checkpoints").glob("checkpoint_*.pt"))[-1]
    assert not (run / "model.pt").exists() and not (run / "train.lock").exists()
