"""Score calibration and fusion of runs: logistic regression trained on a calibration trial list.

`fuse_runs` scores a calibration list and a test list with every run (cosine scores, embeddings once per
utterance), trains an affine map from the runs' scores to log-likelihood ratios, applies it to the test scores and
writes, under the output folder, `<name>.score` (the calibrated/fused LLRs), `<name>.json` (metrics, the calibration
and, for several runs, the Pearson correlation of their scores) and `<name>_correlation.png`. It prints nothing;
the command line (`sslsv fuse`) prints the returned rows.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np

from sslsv.data.manifest import read_manifest
from sslsv.data.trials import read_trials, write_trials
from sslsv.distributed import resolve_device
from sslsv.evaluation.calibration import make_calibration_trials, train_calibration
from sslsv.evaluation.embeddings import embedding_cache
from sslsv.evaluation.evaluate import check_new_outputs, check_trials, score_trials, weights_suffix
from sslsv.evaluation.metrics import compute_act_dcf, compute_cllr, compute_metrics, compute_min_cllr
from sslsv.evaluation.plots import run_names, save_figure
from sslsv.evaluation.scoring import write_scores
from sslsv.runs import RunError, RunLayout, load_model, load_run_config

__all__ = ["fuse_runs", "plot_score_correlation"]


def plot_score_correlation(scores: Sequence, names: Sequence[str], path: str | Path) -> np.ndarray:
    """Pearson correlation of the systems' trial scores, saved as a matrix plot; returns the (K, K) matrix.

    Low correlation is what fusion can gain from. `names` label the axes: pass `plots.run_names(runs)` (the
    last path components that tell the runs apart), not a folder's last name alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    correlation = np.corrcoef(np.stack([np.asarray(s, dtype=np.float64) for s in scores]))
    fig = Figure(figsize=(1.2 * len(names) + 2.5, 1.2 * len(names) + 2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(correlation, vmin=-1, vmax=1, cmap="coolwarm")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{correlation[i, j]:.2f}", ha="center", va="center")
    fig.colorbar(image, ax=ax, label="Pearson correlation")
    ax.set_title("score correlation")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    return correlation


def fuse_runs(runs: Sequence[str | Path], trials: str, calibration_trials: str | Path,
              calibration_root: str | Path | None = None, make_calibration: int | None = None,
              p_target: float = 0.5, output: str | Path | None = None, device: str = "auto",
              progress: bool = False, use_average: bool = True, best: bool = False, overwrite: bool = True,
              cache: bool = True) -> dict:
    """Calibrate one run's scores, or fuse several runs' scores, on a test trial list.

    Args:
        runs: run directories; the first one's config gives the data root (and the training manifest for
            `make_calibration`).
        trials: test trial-set name or trial file (relative to the data root), e.g. "vox1_O".
        calibration_trials: calibration trial file (never the test list); utterance paths are relative to
            `calibration_root`.
        calibration_root: folder of the calibration utterances (default: the data root).
        make_calibration: first write this many calibration trials, drawn from the first run's training
            manifest, to `calibration_trials`.
        p_target: prior of the logistic-regression objective (0.5 = Cllr).
        output: output folder (default: RUNS[0]/fusion).
        device: "auto", "cpu", "cuda" or "cuda:N".
        progress: show embedding-extraction progress bars.
        use_average, best: which weights of every run (sslsv.runs.run_weights); the output name is
            <trials>[_last|_best] (nothing for the first run's default weights, as in evaluate_run).
        overwrite: False refuses (FileExistsError) when an output (or, with make_calibration, the calibration
            trial file) exists, before any model is loaded; the command line's default (--force sets it).
        cache: embeddings go through each run's embedding cache (RUN/embedding_cache).

    Returns:
        The dict written to `<output>/<name>.json` (EER, minDCFs, Cllr, min Cllr, actDCF0.01 of the calibrated
        scores, the runs, the calibration and, for several runs, `score_correlation`) plus `name`, `output` and
        `systems`: one row per run and a last row for the calibrated/fused scores, each {"system", **metrics}.

    Raises:
        RunError, TrialsError, ManifestError, AudioError: an unusable run, trial list or audio file (both lists
            are checked before any model is loaded).
    """
    if not 0.0 < p_target < 1.0:
        raise RunError(f"--p-target must be in (0, 1), got {p_target}")
    runs = [str(r) for r in runs]
    torch_device = resolve_device(device)
    config = load_run_config(runs[0])
    root = Path(config.dataset.data_root)
    out = Path(output) if output else RunLayout(runs[0]).fusion
    name = Path(str(trials)).stem + weights_suffix(runs[0], use_average, best, config.evaluation.use_average)
    planned = [out / f"{name}.score", out / f"{name}.json"]
    planned += [out / f"{name}_correlation.png"] if len(runs) > 1 else []
    check_new_outputs(planned + ([Path(calibration_trials)] if make_calibration else []), overwrite)
    if make_calibration:
        manifest = read_manifest(root / config.dataset.manifest)
        write_trials(make_calibration_trials(manifest, make_calibration), calibration_trials)
    calibration = check_trials(read_trials(calibration_trials), config,
                               Path(calibration_root) if calibration_root else root)
    check_trials(trials, config)

    test = None
    cal_scores, test_scores = [], []
    for run in runs:
        model, run_config, _ = load_model(run, use_average, torch_device, best=best)
        with embedding_cache(RunLayout(run).embedding_cache if cache else None):
            _, scores = score_trials(model, calibration, run_config, torch_device, progress=progress)
            cal_scores.append(scores)
            test, scores = score_trials(model, trials, run_config, torch_device, progress=progress)
        test_scores.append(scores)
        del model

    calibration_model = train_calibration(cal_scores, calibration.trials.labels, p_target=p_target)
    llr = calibration_model.apply(test_scores)
    write_scores(out / f"{name}.score", test.enroll, test.test, llr, test.labels)
    metrics = compute_metrics(llr, test.labels)
    result = {**asdict(metrics), "cllr": compute_cllr(llr, test.labels),
              "min_cllr": compute_min_cllr(llr, test.labels),
              "act_dcf_001": compute_act_dcf(llr, test.labels, 0.01),
              "runs": runs, "calibration": calibration_model.to_dict()}
    if len(runs) > 1:
        correlation = plot_score_correlation(test_scores, run_names(runs), out / f"{name}_correlation.png")
        result["score_correlation"] = correlation.round(4).tolist()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    systems = [{"system": run, **asdict(compute_metrics(scores, test.labels))}
               for run, scores in zip(runs, test_scores)]
    systems.append({"system": "fused (calibrated)" if len(runs) > 1 else "calibrated", **asdict(metrics)})
    return {**result, "name": name, "output": str(out), "systems": systems}
