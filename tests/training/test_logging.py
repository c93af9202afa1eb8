"""Training logs (issue 16, item 6): a summary line per epoch, metrics.jsonl records with timestamps and the run's
training time (kept across a resume), the same names in metrics.jsonl, TensorBoard and the trackers, TensorBoard
hparams, and optional W&B / MLflow loggers (fake modules here: no network, no package needed)."""
import io
import json
import re
import sys
import types
from contextlib import redirect_stdout
from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest
import torch

from sslsv.config import ConfigError, flatten_dict, load_config
from sslsv.training.loggers import curves
from sslsv.training.trainer import Trainer, _duration
from tests.tiny_corpus import tiny_overrides
from tests.training.test_resume_logs import CONFIG

VALIDATION = {1: 30.0, 2: 35.0}  # val/eer by epoch: the second does not improve


class FakeWandb(types.ModuleType):
    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logged, self.finished = [], [], []

    def init(self, **options):
        self.inits.append(options)
        fake = self

        class Run:
            id = options.get("id", "wandb-run-1")

            def log(self, data, step):
                fake.logged.append((step, data))

            def finish(self, exit_code=0):
                fake.finished.append(exit_code)

        return Run()


class FakeMlflow(types.ModuleType):
    def __init__(self):
        super().__init__("mlflow")
        self.starts, self.params, self.metrics, self.ends = [], [], [], []

    def start_run(self, run_name=None, run_id=None):
        self.starts.append({"run_name": run_name, "run_id": run_id})
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id or "mlflow-run-1"))

    def log_params(self, params):
        self.params.append(dict(params))

    def log_metrics(self, metrics, step):
        self.metrics.append((step, dict(metrics)))

    def end_run(self, status="FINISHED"):
        self.ends.append(status)


def validator(epoch: int):
    """A validation that reports VALIDATION[epoch], then the next epoch's value at its next call."""
    calls = []

    def validate(model):
        calls.append(model.training)
        eer = VALIDATION[epoch + len(calls) - 1]
        return {"val/eer": eer, "val/min_dcf_001": 0.5, "val/min_dcf_005": 0.25}

    return validate


def records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def logged(tiny_data, tmp_path_factory):
    """One epoch, then a resume to two (its checkpoint's training time set to 1000 s), with every logger on."""
    run = tmp_path_factory.mktemp("logging") / "run"
    wandb, mlflow = FakeWandb(), FakeMlflow()
    saved = {name: sys.modules.get(name) for name in ("wandb", "mlflow")}
    sys.modules.update(wandb=wandb, mlflow=mlflow)

    def config(epochs):
        return load_config(CONFIG, tiny_overrides(tiny_data, run, **{
            "trainer.epochs": epochs, "trainer.max_steps_per_epoch": 1, "trainer.validate_every": 1,
            "trainer.validation_trials": "tiny/trials.txt", "trainer.loggers": "[tensorboard, wandb, mlflow]"}))

    out = io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models train fastest on one thread
    try:
        with redirect_stdout(out):
            Trainer(config(1), validate=validator(1)).fit()
            first = sorted((run / "checkpoints").glob("checkpoint_*.pt"))[-1]
            state = torch.load(first, weights_only=False)
            first_elapsed = state["elapsed_s"]
            state["elapsed_s"] = 1000.0
            torch.save(state, first)
            Trainer(config(2), validate=validator(2)).fit()
    finally:
        torch.set_num_threads(threads)
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return SimpleNamespace(run=run, stdout=out.getvalue(), wandb=wandb, mlflow=mlflow, config=config(2),
                           first_elapsed=first_elapsed)


def test_one_summary_line_per_epoch(logged):
    lines = [line for line in logged.stdout.splitlines() if line.startswith("epoch ")]
    number = r"\d+\.\d{4}"
    assert len(lines) == 2, logged.stdout
    assert re.fullmatch(rf"epoch 1/1  loss {number}  lr 1\.00e-03  \d+ samples/s  val EER 30\.00 %  "
                        rf"minDCF 0\.5000 \(best\)  \d+ s", lines[0]), lines[0]
    assert re.fullmatch(rf"epoch 2/2  loss {number}  lr 1\.00e-03  \d+ samples/s  val EER 35\.00 %  "
                        rf"minDCF 0\.5000  \d+ s", lines[1]), lines[1]


def test_records_carry_time_and_the_runs_training_time(logged):
    found = records(logged.run)
    for record in found:
        stamp = datetime.fromisoformat(record["time"])
        assert stamp.utcoffset() == timedelta(0)
        assert list(record)[:4] == ["epoch", "step", "time", "elapsed_s"]
    first = [r for r in found if r["epoch"] == 1]
    second = [r for r in found if r["epoch"] == 2]
    assert first and second
    assert 0 < first[0]["elapsed_s"] <= first[-1]["elapsed_s"] <= logged.first_elapsed
    # the resumed run counts on from its checkpoint's training time
    assert all(1000.0 < r["elapsed_s"] < 1000.0 + 600 for r in second)
    assert [r["elapsed_s"] for r in second] == sorted(r["elapsed_s"] for r in second)


def test_metric_names_are_the_same_everywhere(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found = records(logged.run)
    train = [r for r in found if "train/loss" in r]
    assert train and all({"train/loss", "train/lr", "train/samples_per_s"} <= set(r) for r in train)
    assert not any({"loss", "lr", "samples_per_s"} & set(r) for r in found)  # the old metrics.jsonl-only names
    validation = [r for r in found if "val/eer" in r]
    assert [(r["val/eer"], r["best/val/eer"]) for r in validation] == [(30.0, 30.0), (35.0, 30.0)]

    names = set().union(*(curves(r) for r in found))
    events = EventAccumulator(str(logged.run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    assert set(events.Tags()["scalars"]) == names
    assert [e.value for e in events.Scalars("val/eer")] == [30.0, 35.0]

    expected = [(r["step"], curves(r)) for r in found if curves(r)]
    assert [(step, {k: v for k, v in data.items() if k not in ("epoch", "elapsed_s")})
            for step, data in logged.wandb.logged] == expected
    assert logged.mlflow.metrics == expected


def test_tensorboard_hparams_hold_the_config_and_the_metrics(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    events = EventAccumulator(str(logged.run / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    content = {tag: HParamsPluginData.FromString(raw) for tag, raw in events.PluginTagToContent("hparams").items()}
    experiment = content["_hparams_/experiment"].experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["train/loss", "val/eer", "val/min_dcf_001",
                                                             "val/min_dcf_005", "best/val/eer"]
    hparams = content["_hparams_/session_start_info"].session_start_info.hparams
    flat = flatten_dict(logged.config.to_dict())
    assert set(hparams) == set(flat)
    assert hparams["trainer.lr"].number_value == logged.config.trainer.lr
    assert hparams["trainer.init_weights"].string_value == "null"
    assert json.loads(hparams["dataset.views"].string_value) == flat["dataset.views"]  # a list, as its JSON text
    assert content["_hparams_/session_end_info"].session_end_info.status == 1  # STATUS_SUCCESS


def test_trackers_get_the_config_and_continue_their_run_on_resume(logged):
    wandb, mlflow = logged.wandb, logged.mlflow
    flat = flatten_dict(logged.config.to_dict())
    assert len(wandb.inits) == 2 and set(wandb.inits[0]["config"]) == set(flat)
    assert wandb.inits[0]["config"]["trainer.lr"] == logged.config.trainer.lr
    assert "id" not in wandb.inits[0] and (wandb.inits[1]["id"], wandb.inits[1]["resume"]) == ("wandb-run-1", "allow")
    assert wandb.finished == [0, 0]
    assert [s["run_id"] for s in mlflow.starts] == [None, "mlflow-run-1"]
    assert all(len(batch) <= 100 for batch in mlflow.params)
    assert set().union(*mlflow.params) == set(flat)  # logged once, when the run started
    assert mlflow.ends == ["FINISHED", "FINISHED"]
    newest = sorted((logged.run / "checkpoints").glob("checkpoint_*.pt"))[-1]
    assert torch.load(newest, weights_only=False)["loggers"] == {"wandb": {"id": "wandb-run-1"},
                                                                  "mlflow": {"run_id": "mlflow-run-1"}}


def test_a_missing_tracker_package_is_a_config_error(tiny_data, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    config = load_config(CONFIG, tiny_overrides(tiny_data, tmp_path / "run", **{"trainer.loggers": "[wandb]"}))
    with pytest.raises(ConfigError, match=r"^trainer\.loggers: 'wandb' needs .*\(pip install wandb\)"):
        Trainer(config)
    assert not (tmp_path / "run").exists()


def test_durations():
    assert [_duration(s) for s in (0.4, 38, 725, 3 * 3600 + 7 * 60 + 5)] == ["0 s", "38 s", "12 min 05 s", "3 h 07 min"]
