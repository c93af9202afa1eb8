"""Where the trainer's records go: RUN/metrics.jsonl always, and the experiment trackers `trainer.loggers` names
(tensorboard, wandb, mlflow), on rank 0 only. Every logger gets the same records under the same key names:

    {"epoch": 3, "step": 120, "time": "2026-01-01T12:00:00+00:00", "elapsed_s": 95.2,
     "train/loss": 4.12, "train/lr": 0.00095, "train/samples_per_s": 412.0, "train/<method signal>": ...}
    {"epoch": 3, "step": 120, "time": ..., "elapsed_s": ..., "val/eer": 31.2, ..., "best/val/eer": 30.9}

`epoch`, `step`, `time` (ISO 8601, UTC) and `elapsed_s` (training time since the run's first start, resumes
included) say where a record stands; every other number is a curve, logged to each tracker under its own name.
wandb and mlflow are imported only when listed; a missing one is a ConfigError naming the key and the pip command.
Each tracker gets the flattened config when training starts (TensorBoard: its hparams tab) and is closed at the end.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import sys
from pathlib import Path

from sslsv.config import ConfigError, flatten_dict

# A record's position, not a curve: written to metrics.jsonl, not plotted as scalars.
POSITION_KEYS = ("epoch", "step", "time", "elapsed_s")

# Optional trackers: the module each one imports and how to install it.
PACKAGES = {"wandb": "wandb", "mlflow": "mlflow"}


def check_available(names: list[str]) -> None:
    """ConfigError naming `trainer.loggers` when a listed tracker's package is not installed (checked without
    importing it, before any training)."""
    for name in names:
        module = PACKAGES.get(name)
        if module is not None and module not in sys.modules and importlib.util.find_spec(module) is None:
            raise ConfigError(f"trainer.loggers: '{name}' needs the {module} package, which is not installed "
                              f"(pip install {module}), or remove it from the list")


def _import(name: str):
    check_available([name])
    return importlib.import_module(PACKAGES[name])


def curves(record: dict) -> dict[str, float]:
    """The record's numbers that are curves (not its position, not text)."""
    return {k: float(v) for k, v in record.items()
            if k not in POSITION_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def hparams(config: dict) -> dict[str, bool | int | float | str]:
    """The config flattened to dotted keys with scalar values, as trackers take hyper-parameters: lists (and
    anything else) as their JSON text, null as the string "null"."""
    out = {}
    for key, value in flatten_dict(config).items():
        if value is None:
            out[key] = "null"
        elif isinstance(value, (bool, int, float, str)):
            out[key] = value
        else:
            out[key] = json.dumps(value, default=str)
    return out


class Logger:
    """One destination of the records. `start` gets the flattened config (hparams) and the names of the metrics
    the run reports (for tables of runs); `state_dict` is kept in the checkpoints, so that a resumed run continues
    the same tracker run; `close` gets "finished", "failed" or "preempted"."""

    name = ""

    def start(self, config: dict, metric_names: list[str], resumed: bool) -> None:
        pass

    def log(self, record: dict) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def close(self, status: str) -> None:
        pass


class JsonlLogger(Logger):
    """RUN/metrics.jsonl, one JSON record a line, appended (always on)."""

    name = "jsonl"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def log(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


class TensorBoardLogger(Logger):
    """RUN/tensorboard/: each curve as a scalar under the record's key, at the record's step; the config and the
    run's metrics in the HPARAMS tab.

    TensorBoard keeps the first hparams summary of a run (later ones are ignored), and its table shows, for each
    metric it names, the latest value of the scalar of that name in the run. So the hparams summary is written once
    when the run starts, naming train/loss, the validation metrics and best/<tracked metric>; the table then shows
    their values as of the last validation and, at the end, the final ones. The session is marked finished at the end.
    """

    name = "tensorboard"

    def __init__(self, folder: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder))

    def start(self, config: dict, metric_names: list[str], resumed: bool) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        # Dummy values: TensorBoard reads each metric's value from the scalar of that name in this run.
        experiment, session_start, _ = hparams_summaries(hparams(config), {name: 0.0 for name in metric_names})
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(session_start)

    def log(self, record: dict) -> None:
        for key, value in curves(record).items():
            self.writer.add_scalar(key, value, record["step"])

    def close(self, status: str) -> None:
        if status == "finished":
            from torch.utils.tensorboard.summary import hparams as hparams_summaries

            _, _, session_end = hparams_summaries({}, {})  # the session's end, with status "success"
            self.writer.file_writer.add_summary(session_end)
        self.writer.close()


class WandbLogger(Logger):
    """Weights & Biases: one wandb run per sslsv run, continued on resume (its id is kept in the checkpoints).
    Project, entity and mode come from wandb's own settings (WANDB_PROJECT, default "sslsv"; WANDB_ENTITY;
    WANDB_MODE=offline); its files go to RUN/wandb/."""

    name = "wandb"

    def __init__(self, run_dir: str | Path, run_name: str, state: dict):
        self.wandb = _import("wandb")
        self.run_dir, self.run_name = Path(run_dir), run_name
        self.id = state.get("id")
        self.run = None

    def start(self, config: dict, metric_names: list[str], resumed: bool) -> None:
        options = {"project": os.environ.get("WANDB_PROJECT", "sslsv"), "name": self.run_name,
                   "dir": str(self.run_dir), "config": hparams(config)}
        if self.id is not None:  # a resume: the same wandb run, whose config may change (e.g. more epochs)
            options.update(id=self.id, resume="allow", allow_val_change=True)
        self.run = self.wandb.init(**options)
        self.id = self.run.id

    def log(self, record: dict) -> None:
        values = curves(record)
        if values:
            self.run.log({"epoch": record["epoch"], "elapsed_s": record.get("elapsed_s"), **values},
                         step=record["step"])

    def state_dict(self) -> dict:
        return {"id": self.id}

    def close(self, status: str) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if status == "finished" else 1)
            self.run = None


class MlflowLogger(Logger):
    """MLflow: one MLflow run per sslsv run, continued on resume (its run id is kept in the checkpoints). The
    tracking server and experiment come from MLflow's own settings (MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME);
    the config is logged as params."""

    name = "mlflow"
    PARAMS_PER_CALL = 100  # MLflow's batch limit

    def __init__(self, run_name: str, state: dict):
        self.mlflow = _import("mlflow")
        self.run_name = run_name
        self.run_id = state.get("run_id")
        self.active = False

    def start(self, config: dict, metric_names: list[str], resumed: bool) -> None:
        if self.run_id is not None:
            self.mlflow.start_run(run_id=self.run_id)
        else:
            self.run_id = self.mlflow.start_run(run_name=self.run_name).info.run_id
            params = list(hparams(config).items())
            for first in range(0, len(params), self.PARAMS_PER_CALL):
                self.mlflow.log_params(dict(params[first : first + self.PARAMS_PER_CALL]))
        self.active = True

    def log(self, record: dict) -> None:
        values = {k: v for k, v in curves(record).items() if math.isfinite(v)}
        if values:
            self.mlflow.log_metrics(values, step=record["step"])

    def state_dict(self) -> dict:
        return {"run_id": self.run_id}

    def close(self, status: str) -> None:
        if self.active:
            self.mlflow.end_run(status={"finished": "FINISHED", "preempted": "KILLED"}.get(status, "FAILED"))
            self.active = False


class RunLoggers:
    """metrics.jsonl and the trackers of `names`, fed the same records."""

    def __init__(self, metrics_path: str | Path, tensorboard_dir: str | Path, run_dir: str | Path, names: list[str],
                 state: dict | None = None):
        state = state or {}
        run_name = str(run_dir)
        build = {TensorBoardLogger.name: lambda: TensorBoardLogger(tensorboard_dir),
                 WandbLogger.name: lambda: WandbLogger(run_dir, run_name, state.get(WandbLogger.name, {})),
                 MlflowLogger.name: lambda: MlflowLogger(run_name, state.get(MlflowLogger.name, {}))}
        self.loggers: list[Logger] = [JsonlLogger(metrics_path)]
        for name in names:
            if name not in build:  # the config admits only these names
                raise ConfigError(f"trainer.loggers: unknown logger {name!r} (choose from {', '.join(build)})")
            self.loggers.append(build[name]())

    def start(self, config: dict, metric_names: list[str], resumed: bool) -> None:
        for logger in self.loggers:
            logger.start(config, metric_names, resumed)

    def log(self, record: dict) -> None:
        for logger in self.loggers:
            logger.log(record)

    def state_dict(self) -> dict:
        return {logger.name: state for logger in self.loggers if (state := logger.state_dict())}

    def close(self, status: str) -> None:
        """Close every logger, even when one fails (the first error is raised after the others are closed)."""
        failure = None
        for logger in self.loggers:
            try:
                logger.close(status)
            except Exception as error:  # noqa: BLE001 - the other trackers still get closed
                failure = failure or error
        self.loggers = []
        if failure is not None:
            raise failure
