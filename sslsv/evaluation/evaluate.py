"""Evaluate a run: full-length embeddings, cosine scores, EER / minDCF, score files, results.json, DET plot."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

from sslsv.config import Config, ConfigError, build_config
from sslsv.data.trials import resolve_trials
from sslsv.encoders.base import SpeakerModel, build_speaker_model
from sslsv.evaluation.embeddings import extract_embeddings
from sslsv.evaluation.metrics import VerificationMetrics, compute_metrics
from sslsv.evaluation.plots import plot_det
from sslsv.evaluation.scoring import cosine_scores, index_trials, write_scores
from sslsv.registry import load_all
from sslsv.training.checkpoint import list_epoch_weights, load_checkpoint


class RunError(RuntimeError):
    """A run directory that cannot be evaluated, with the reason."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def latest_run(models_dir: str | Path = "models") -> Path:
    """The most recently trained run under `models_dir` (by the time of its newest weights)."""
    candidates = []
    for config in Path(models_dir).rglob("config.yml"):
        run = config.parent
        weights = [p for p in [run / "model_avg.pt", run / "model.pt"] if p.exists()] + list_epoch_weights(run / "checkpoints")
        if weights:
            candidates.append((max(p.stat().st_mtime for p in weights), run))
    if not candidates:
        raise RunError(f"no trained run found under {models_dir}/ (train one with: python train.py CONFIG)")
    return max(candidates)[1]


def load_run_config(run_dir: str | Path) -> Config:
    path = Path(run_dir) / "config.yml"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run directory: {path} is missing")
    load_all()
    try:
        return build_config(yaml.safe_load(path.read_text()))
    except ConfigError as error:
        raise RunError(f"{path}: {error}") from None


def run_weights(run_dir: str | Path, use_average: bool = True) -> Path:
    run_dir = Path(run_dir)
    order = (["model_avg.pt"] if use_average else []) + ["model.pt"]
    for name in order:
        if (run_dir / name).exists():
            return run_dir / name
    epochs = list_epoch_weights(run_dir / "checkpoints")
    if epochs:
        return epochs[-1]
    raise RunError(f"{run_dir} has no weights yet (model_avg.pt, model.pt or checkpoints/weights_e*.pt)")


def load_model(run_dir: str | Path, use_average: bool = True, device: str | torch.device = "cpu",
               random_weights: bool = False) -> tuple[SpeakerModel, Config, str]:
    """The run's embedding model in eval mode, its config, and which weights were loaded."""
    config = load_run_config(run_dir)
    torch.manual_seed(config.trainer.seed)  # the random-weights baseline is the run's own initialisation
    model = build_speaker_model(config.encoder, config.features)
    source = "random weights"
    if not random_weights:
        path = run_weights(run_dir, use_average)
        state = load_checkpoint(path)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RunError(f"{path} does not match the run's encoder: missing {missing[:5]}, unexpected {unexpected[:5]}")
        source = str(path)
    return model.to(device).eval(), config, source


def score_trials(model: torch.nn.Module, trials_name: str, config: Config, device: torch.device,
                 progress: bool = True):
    """Embed every utterance of a trial list and return (trials, scores)."""
    trials, audio_dir = resolve_trials(trials_name, config.dataset.data_root)
    utterances = trials.utterances()
    paths = [str(Path(audio_dir) / u) for u in utterances]
    was_training = model.training
    model.eval()
    embeddings = extract_embeddings(model, paths, config.features.sample_rate, device,
                                    batch_seconds=config.evaluation.batch_seconds,
                                    max_trim=config.evaluation.max_trim, progress=progress,
                                    num_workers=min(config.dataset.num_workers, 4))
    model.train(was_training)
    enroll, test = index_trials(trials.enroll, trials.test, utterances)
    return trials, cosine_scores(embeddings, enroll, test)


def evaluate_model(model: torch.nn.Module, trials_name: str, config: Config, device: torch.device,
                   progress: bool = True) -> VerificationMetrics:
    trials, scores = score_trials(model, trials_name, config, device, progress)
    return compute_metrics(scores, trials.labels)


def evaluate_run(run_dir: str | Path, trials_names: list[str] | None = None, use_average: bool | None = None,
                 device: str = "auto", random_baseline: bool = False, progress: bool = True) -> dict:
    """Evaluate a run on each trial list; write scores/<trials>.score, results.json and det_<trials>.png."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    names = trials_names or config.evaluation.trials
    average = config.evaluation.use_average if use_average is None else use_average
    torch_device = resolve_device(device if device != "auto" else config.evaluation.device)
    systems = {"trained": False} | ({"random weights": True} if random_baseline else {})
    results_path = run_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    table = []
    for name in names:
        curves = {}
        for label, random_weights in systems.items():
            model, config, source = load_model(run_dir, average, torch_device, random_weights)
            trials, scores = score_trials(model, name, config, torch_device, progress)
            metrics = compute_metrics(scores, trials.labels)
            suffix = "" if not random_weights else "_random"
            write_scores(run_dir / "scores" / f"{slug(name)}{suffix}.score", trials.enroll, trials.test, scores, trials.labels)
            results[f"test/{slug(name)}{suffix}"] = {**asdict(metrics), "weights": source}
            curves[f"{run_dir.name} ({label})"] = (scores, trials.labels)
            table.append((name, label, metrics))
        plot_det(curves, run_dir / f"det_{slug(name)}.png", title=f"{run_dir} on {name}")
    results_path.write_text(json.dumps(results, indent=2))
    print(format_table(table))
    return results


def slug(trials_name: str) -> str:
    """File-name-safe name of a trial set: vox1_O stays vox1_O, lists/my trials.txt becomes lists_my_trials."""
    name = trials_name[:-4] if trials_name.endswith(".txt") else trials_name
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.replace("/", "_")).strip("_.")


def format_table(rows: list[tuple[str, str, VerificationMetrics]]) -> str:
    lines = [f"{'trials':<12} {'system':<16} {'EER (%)':>8} {'minDCF0.01':>11} {'minDCF0.05':>11} {'trials':>9}"]
    for name, label, m in rows:
        lines.append(f"{name:<12} {label:<16} {m.eer:>8.2f} {m.min_dcf_001:>11.4f} {m.min_dcf_005:>11.4f} {m.num_trials:>9}")
    return "\n".join(lines)
