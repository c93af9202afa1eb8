"""`sslsv` sub-commands around a trained run: prepare, embed, score, export, average, fuse.

Each function takes argv (without the command name) and returns an exit code: 0 on success, 2 on a user error
(one clear message on stderr), like the commands in sslsv/cli.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _errors() -> tuple[type[BaseException], ...]:
    from sslsv.cli import _user_errors
    from sslsv.data.prepare import PrepareError
    from sslsv.export import ExportError

    return _user_errors() + (PrepareError, ExportError)


def _run(function) -> int:
    try:
        function()
    except _errors() as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _existing(paths: list[str]) -> list[str]:
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"audio file(s) not found: {', '.join(missing[:10])}"
                                + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
    return paths


def prepare_main(argv: list[str] | None = None) -> int:
    """Prepare VoxCeleb1/2, MUSAN or RIRs under a data root (extract, convert, manifests, trial lists)."""
    from sslsv.data.prepare import main

    return main(argv)


def embed_main(argv: list[str] | None = None) -> int:
    """Embed audio files with a trained run: sslsv embed RUN a.wav b.wav -o emb.npy."""
    parser = argparse.ArgumentParser(prog="sslsv embed", description=embed_main.__doc__)
    parser.add_argument("run", help="run directory")
    parser.add_argument("files", nargs="*", help="audio files")
    parser.add_argument("--list", help="text file with one audio path per line (added after FILES)")
    parser.add_argument("-o", "--output", required=True, help="output .npy, (N, D) float32 in input order")
    parser.add_argument("--last", action="store_true", help="last epoch's weights instead of the average")
    parser.add_argument("--no-normalize", action="store_true", help="keep raw (not L2-normalised) embeddings")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    def run() -> None:
        import numpy as np

        import sslsv

        files = list(args.files)
        if args.list:
            files += [line.strip() for line in Path(args.list).read_text().splitlines() if line.strip()]
        if not files:
            parser.error("no audio files given (FILES or --list)")
        embedder = sslsv.load(args.run, args.device, use_average=not args.last)
        embeddings = embedder.embed(_existing(files), normalize=not args.no_normalize, progress=True)
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        np.save(output, embeddings)
        output.with_suffix(".txt").write_text("\n".join(files) + "\n")
        print(f"{output}: {embeddings.shape[0]} x {embeddings.shape[1]} embeddings ({embedder.source}); "
              f"row order in {output.with_suffix('.txt')}")

    return _run(run)


def score_main(argv: list[str] | None = None) -> int:
    """Cosine score of two audio files with a trained run: sslsv score RUN a.wav b.wav."""
    parser = argparse.ArgumentParser(prog="sslsv score", description=score_main.__doc__)
    parser.add_argument("run")
    parser.add_argument("enroll")
    parser.add_argument("test")
    parser.add_argument("--last", action="store_true")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    def run() -> None:
        import sslsv

        _existing([args.enroll, args.test])
        embedder = sslsv.load(args.run, args.device, use_average=not args.last)
        print(f"{embedder.score(args.enroll, args.test):.6f}")

    return _run(run)


def export_main(argv: list[str] | None = None) -> int:
    """Export a run's embedding model to ONNX (dynamic batch and time), checked with onnxruntime."""
    parser = argparse.ArgumentParser(prog="sslsv export", description=export_main.__doc__)
    parser.add_argument("run")
    parser.add_argument("-o", "--output", required=True, help="output .onnx file")
    parser.add_argument("--last", action="store_true")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    args = parser.parse_args(argv)

    def run() -> None:
        from sslsv.evaluation.evaluate import load_model
        from sslsv.export import export_onnx, verify_onnx

        model, config, source = load_model(args.run, not args.last, "cpu")
        path = export_onnx(model, args.output, config.features.sample_rate, args.opset, check=False)
        message = f"{path}: exported from {source}"
        if not args.no_check:
            message += f"; onnxruntime max |diff| {verify_onnx(model, path, config.features.sample_rate):.1e}"
        print(message)

    return _run(run)


def average_main(argv: list[str] | None = None) -> int:
    """Average the last N epochs' weights of a run: sslsv average RUN --last 10 -o avg.pt."""
    parser = argparse.ArgumentParser(prog="sslsv average", description=average_main.__doc__)
    parser.add_argument("run")
    parser.add_argument("--last", type=int, default=10, help="number of most recent epoch weights")
    parser.add_argument("-o", "--output", help="default RUN/model_avg.pt")
    args = parser.parse_args(argv)

    def run() -> None:
        from sslsv.export import average_checkpoints, last_epoch_weights

        paths = last_epoch_weights(args.run, args.last)
        out = average_checkpoints(paths, args.output or Path(args.run) / "model_avg.pt")
        print(f"{out}: mean of {', '.join(p.name for p in paths)}")

    return _run(run)


def _score_list(run_dir: str, trials, audio_dir: Path, device) -> "object":
    """Cosine scores of a Trials object with a run (embeddings once per utterance)."""
    from sslsv.evaluation.embeddings import extract_embeddings
    from sslsv.evaluation.evaluate import load_model
    from sslsv.evaluation.scoring import cosine_scores, index_trials

    model, config, _ = load_model(run_dir, True, device)
    utterances = trials.utterances()
    embeddings = extract_embeddings(model, [str(audio_dir / u) for u in utterances], config.features.sample_rate,
                                    device, batch_seconds=config.evaluation.batch_seconds,
                                    max_trim=config.evaluation.max_trim, num_workers=0)
    enroll, test = index_trials(trials.enroll, trials.test, utterances)
    return cosine_scores(embeddings, enroll, test)


def plot_score_correlation(scores: list, names: list[str], path: Path):
    """Pearson correlation of the systems' trial scores, as a matrix plot (what fusion can gain: low correlation)."""
    import numpy as np
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
    fig.colorbar(image, ax=ax)
    ax.set_title("score correlation")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return correlation


def fuse_main(argv: list[str] | None = None) -> int:
    """Calibrate / fuse runs' scores with logistic regression trained on a calibration trial list."""
    parser = argparse.ArgumentParser(prog="sslsv fuse", description=fuse_main.__doc__)
    parser.add_argument("runs", nargs="+", help="one run (calibration) or several (fusion)")
    parser.add_argument("--trials", required=True, help="test trial-set name or file (e.g. vox1_O)")
    parser.add_argument("--calibration-trials", required=True,
                        help="trial file, utterance paths relative to --calibration-root (never the test list)")
    parser.add_argument("--calibration-root", help="folder of the calibration utterances (default: the data root)")
    parser.add_argument("--make-calibration", type=int, metavar="N",
                        help="first write N calibration trials from the first run's training manifest")
    parser.add_argument("--p-target", type=float, default=0.5, help="prior of the training objective (0.5 = Cllr)")
    parser.add_argument("--output", help="output folder (default: RUN1/fusion)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    def run() -> None:
        from dataclasses import asdict

        from sslsv.data.manifest import read_manifest
        from sslsv.data.trials import read_trials, resolve_trials, write_trials
        from sslsv.evaluation.calibration import make_calibration_trials, train_calibration
        from sslsv.evaluation.evaluate import load_run_config, resolve_device
        from sslsv.evaluation.metrics import compute_act_dcf, compute_cllr, compute_metrics, compute_min_cllr
        from sslsv.evaluation.scoring import write_scores

        device = resolve_device(args.device)
        config = load_run_config(args.runs[0])
        root = Path(config.dataset.data_root)
        if args.make_calibration:
            manifest = read_manifest(root / config.dataset.manifest)
            write_trials(make_calibration_trials(manifest, args.make_calibration), args.calibration_trials)
        calibration = read_trials(args.calibration_trials)
        calibration_root = Path(args.calibration_root) if args.calibration_root else root
        test, audio_dir = resolve_trials(args.trials, root)
        cal_scores = [_score_list(r, calibration, calibration_root, device) for r in args.runs]
        test_scores = [_score_list(r, test, audio_dir, device) for r in args.runs]
        model = train_calibration(cal_scores, calibration.labels, p_target=args.p_target)
        llr = model.apply(test_scores)
        out = Path(args.output) if args.output else Path(args.runs[0]) / "fusion"
        name = Path(args.trials).stem
        write_scores(out / f"{name}.score", test.enroll, test.test, llr, test.labels)
        metrics = compute_metrics(llr, test.labels)
        result = {**asdict(metrics), "cllr": compute_cllr(llr, test.labels),
                  "min_cllr": compute_min_cllr(llr, test.labels),
                  "act_dcf_001": compute_act_dcf(llr, test.labels, 0.01),
                  "runs": list(args.runs), "calibration": model.to_dict()}
        (out / f"{name}.json").write_text(json.dumps(result, indent=2))
        rows = [(str(run), compute_metrics(scores, test.labels)) for run, scores in zip(args.runs, test_scores)]
        rows.append(("fused (calibrated)" if len(args.runs) > 1 else "calibrated", metrics))
        print(f"{'system':<48} {'EER (%)':>8} {'minDCF0.01':>11} {'minDCF0.05':>11}")
        for label, m in rows:
            print(f"{label:<48} {m.eer:>8.2f} {m.min_dcf_001:>11.4f} {m.min_dcf_005:>11.4f}")
        if len(args.runs) > 1:
            correlation = plot_score_correlation(test_scores, [Path(r).name for r in args.runs],
                                                 out / f"{name}_correlation.png")
            result["score_correlation"] = correlation.round(4).tolist()
            (out / f"{name}.json").write_text(json.dumps(result, indent=2))
        print(f"{name}: EER {metrics.eer:.2f} %, minDCF0.01 {metrics.min_dcf_001:.4f}, Cllr {result['cllr']:.3f} "
              f"(min {result['min_cllr']:.3f}), weights {model.weights.round(3).tolist()} -> {out}")

    return _run(run)
