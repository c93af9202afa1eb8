"""Commands around a trained run: `sslsv embed`, `sslsv score`, `sslsv export`, `sslsv average`."""
from __future__ import annotations

import argparse
from pathlib import Path

from sslsv.cli.errors import run_command
from sslsv.cli.options import add_weights_option, weights_choice

DEVICE_HELP = "auto, cpu, cuda or cuda:N (default auto)"


def build_embed_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslsv embed",
        description="Embed audio files with a trained run. Inputs: FILES / --list (keys: the paths as given, or "
                    "relative to --key-root), a Kaldi wav.scp (keys: its utterance ids) or every utterance of a "
                    "trial list (keys: the list's names). Outputs: .npy + keys .txt, .npz (arrays 'embeddings' "
                    "and 'keys') or Kaldi .ark + .scp.",
        epilog="Example: sslsv embed models/simclr/fast_resnet34_demo --trials demo -o emb.npz")
    parser.add_argument("run", help="run directory")
    parser.add_argument("files", nargs="*", help="audio files (wav, flac, ogg; mp3, m4a, aac with a decoder)")
    parser.add_argument("--list", help="text file with one audio path per line (added after FILES)")
    parser.add_argument("--wav-scp", metavar="FILE",
                        help="Kaldi wav.scp, 'uttid path' lines (piped commands are refused); keys are the ids")
    parser.add_argument("--trials", metavar="LIST",
                        help="embed every utterance of a trial list (a registered name such as demo, or a file "
                             "relative to the run's data root); keys are the list's utterance names")
    parser.add_argument("--audio-root", metavar="DIR",
                        help="with --trials: folder the list's utterance paths are relative to (as sslsv evaluate)")
    parser.add_argument("--key-root", metavar="DIR",
                        help="keys of FILES / --list are their paths relative to DIR (e.g. the audio folder that "
                             "a trial list's names are relative to)")
    parser.add_argument("-o", "--output", required=True,
                        help="output: emb.npy (+ emb.txt, the keys in row order), emb.npz, or emb.ark / emb.scp "
                             "(Kaldi: both are written)")
    parser.add_argument("--format", choices=["npy", "npz", "kaldi"],
                        help="output format when --output has no suffix (default: from the suffix)")
    parser.add_argument("--force", action="store_true", help="replace existing output files")
    add_weights_option(parser)
    parser.add_argument("--no-normalize", action="store_true", help="keep raw (not L2-normalised) embeddings")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    return parser


def _relative_key(path: str, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        from sslsv.audio.io import AudioError

        raise AudioError(f"{path}: not under --key-root {root}") from None


def embed_main(argv: list[str] | None = None) -> int:
    """sslsv embed RUN a.wav b.wav -o emb.npy: embed audio files with a trained run."""
    parser = build_embed_parser()
    args = parser.parse_intermixed_args(argv)  # options may stand between the run and the files
    files = list(args.files)
    if args.list:
        try:
            files += [line.strip() for line in Path(args.list).read_text().splitlines() if line.strip()]
        except OSError as error:
            parser.error(f"--list: {error}")
    if not files and not args.wav_scp and not args.trials:
        parser.error("no audio files given (FILES, --list, --wav-scp or --trials)")
    if args.audio_root and not args.trials:
        parser.error("--audio-root goes with --trials")
    if args.key_root and not files:
        parser.error("--key-root applies to FILES / --list")

    def run() -> None:
        import sslsv
        from sslsv.audio.io import check_audio_files
        from sslsv.evaluation.embedding_io import embedding_files, save_embeddings

        _, outputs = embedding_files(args.output, args.format)  # an unknown format fails before any work
        existing = [str(p) for p in outputs if p.exists()]
        if existing and not args.force:
            raise FileExistsError(f"{', '.join(existing)} exists; pass --force to replace")
        keys = ([_relative_key(f, Path(args.key_root).resolve()) for f in files] if args.key_root
                else list(files))
        paths = list(files)
        if args.wav_scp:
            from sslsv.data.manifest import read_wav_scp

            ids, scp_paths = read_wav_scp(args.wav_scp)
            keys += ids
            paths += scp_paths
        if args.trials:
            from sslsv.data.trials import locate_trial_audio, resolve_trials
            from sslsv.runs import load_run_config

            config = load_run_config(args.run)
            trials, folder = resolve_trials(args.trials, config.dataset.data_root, args.audio_root)
            keys += trials.utterances()
            paths += locate_trial_audio(trials, folder)
        check_audio_files(paths)  # every unusable file named before the model is loaded
        use_average, best = weights_choice(args)
        embedder = sslsv.load(args.run, args.device, use_average=use_average, best=best)
        embeddings = embedder.embed(paths, normalize=not args.no_normalize, progress=True)
        written = save_embeddings(args.output, keys, embeddings, args.format)
        print(f"{', '.join(map(str, written))}: {embeddings.shape[0]} x {embeddings.shape[1]} embeddings "
              f"({embedder.source})")

    return run_command(run)


def build_score_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslsv score",
        description="Cosine score of two audio files with a trained run, and a same/different decision when a "
                    "threshold is given: a fixed one, a calibration's Bayes threshold, or the EER threshold of a "
                    "trial list.")
    parser.add_argument("run", help="run directory")
    parser.add_argument("enroll", help="enrolment audio file")
    parser.add_argument("test", help="test audio file")
    threshold = parser.add_mutually_exclusive_group()
    threshold.add_argument("--threshold", type=float, metavar="X",
                           help="decide 'same speaker' when the cosine score is >= X")
    threshold.add_argument("--calibration", metavar="FILE",
                           help="calibration JSON written by `sslsv fuse RUN ...` (one run): the score becomes a "
                                "log-likelihood ratio, compared with the Bayes threshold log((1 - P) / P)")
    threshold.add_argument("--threshold-from-trials", metavar="LIST",
                           help="score this trial list (name or file, as sslsv evaluate) with the run first and "
                                "use its EER threshold (nothing is cached)")
    parser.add_argument("--p-target", type=float, metavar="P",
                        help="with --calibration: target prior of the decision (default: the calibration's)")
    parser.add_argument("--audio-root", metavar="DIR",
                        help="with --threshold-from-trials: folder the list's utterance paths are relative to")
    add_weights_option(parser)
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    return parser


def _read_calibration(path: str, run: str):
    """The one-run Calibration of a `sslsv fuse` JSON (its "calibration" entry, or the bare dict)."""
    import json
    import sys

    from sslsv.evaluation.calibration import Calibration
    from sslsv.evaluation.errors import EvaluationError

    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--calibration: {path} not found") from None
    except (OSError, ValueError) as error:
        raise EvaluationError(f"--calibration: {path} is not a readable JSON file ({error})") from None
    entry = data.get("calibration", data) if isinstance(data, dict) else None
    try:
        calibration = Calibration.from_dict(entry)
    except (TypeError, KeyError, ValueError):
        raise EvaluationError(f"--calibration: {path} holds no calibration (weights, bias, p_target), as written "
                              f"by sslsv fuse") from None
    if len(calibration.weights) != 1:
        raise EvaluationError(f"--calibration: {path} fuses {len(calibration.weights)} runs; sslsv score needs "
                              f"the calibration of one run (sslsv fuse RUN --trials ... --calibration-trials ...)")
    runs = data.get("runs") if isinstance(data, dict) else None
    if runs and all(Path(r).resolve() != Path(run).resolve() for r in runs):
        print(f"warning: {path} calibrates {', '.join(runs)}, not {run}", file=sys.stderr)
    return calibration


def score_main(argv: list[str] | None = None) -> int:
    """sslsv score RUN a.wav b.wav [--threshold X | --calibration FILE | --threshold-from-trials LIST]."""
    parser = build_score_parser()
    args = parser.parse_args(argv)
    if args.p_target is not None and not args.calibration:
        parser.error("--p-target goes with --calibration")
    if args.p_target is not None and not 0.0 < args.p_target < 1.0:
        parser.error(f"--p-target must be in (0, 1), got {args.p_target}")
    if args.audio_root and not args.threshold_from_trials:
        parser.error("--audio-root goes with --threshold-from-trials")

    def run() -> None:
        import math

        import sslsv
        from sslsv.audio.io import check_audio_files

        check_audio_files([args.enroll, args.test])
        calibration = _read_calibration(args.calibration, args.run) if args.calibration else None
        checked = config = None
        if args.threshold_from_trials:
            from sslsv.evaluation.evaluate import check_trials
            from sslsv.runs import load_run_config

            config = load_run_config(args.run)
            checked = check_trials(args.threshold_from_trials, config, args.audio_root)  # before the model
        use_average, best = weights_choice(args)
        embedder = sslsv.load(args.run, args.device, use_average=use_average, best=best)
        score = embedder.score(args.enroll, args.test)
        print(f"{score:.6f}")
        if args.threshold is not None:
            value, threshold, source = score, args.threshold, "--threshold"
        elif calibration is not None:
            p = args.p_target if args.p_target is not None else calibration.p_target
            value = float(calibration.apply([score])[0])
            threshold = math.log((1.0 - p) / p)
            w, b = float(calibration.weights[0]), calibration.bias
            cosine = f"; cosine threshold {(threshold - b) / w:.4f}" if w > 0 else ""
            source = f"Bayes threshold at p_target {p:g} of {args.calibration}{cosine}"
        elif checked is not None:
            from sslsv.evaluation.evaluate import score_trials
            from sslsv.evaluation.metrics import compute_eer

            trials, scores = score_trials(embedder.model, checked, config, embedder.device, progress=True)
            eer, threshold = compute_eer(scores, trials.labels)
            value, source = score, f"EER threshold of {trials.path}, EER {100 * eer:.2f} %"
        else:
            return
        name = "LLR" if calibration is not None else "score"
        decision = "same speaker" if value >= threshold else "different speakers"
        relation = ">=" if value >= threshold else "<"
        print(f"{decision}: {name} {value:.6f} {relation} threshold {threshold:.6f} ({source})")

    return run_command(run)


def export_main(argv: list[str] | None = None) -> int:
    """sslsv export RUN -o model.onnx: export a run's embedding model to ONNX, checked with onnxruntime."""
    parser = argparse.ArgumentParser(
        prog="sslsv export",
        description="Export a run's embedding model to ONNX (dynamic batch and time), checked with onnxruntime. "
                    "Input 'waveform' (batch, samples) float32 at the run's sample rate [and 'lengths' (batch,) "
                    "int64], output 'embedding' (batch, D) float32.")
    parser.add_argument("run", help="run directory")
    parser.add_argument("-o", "--output", required=True, help="output .onnx file")
    add_weights_option(parser)
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    parser.add_argument("--with-lengths", action="store_true",
                        help="add a 'lengths' (batch,) int64 input, the valid samples of each row: padding beyond "
                             "it is masked, so a zero-padded batch gives each row its own embedding")
    parser.add_argument("--normalize", action="store_true", help="L2-normalise the output embeddings")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    args = parser.parse_args(argv)

    def run() -> None:
        from sslsv.export import export_onnx, padding_cosine, random_waveforms, verify_onnx
        from sslsv.runs import load_model

        use_average, best = weights_choice(args)
        model, config, source = load_model(args.run, use_average, "cpu", best=best)
        rate = config.features.sample_rate
        path = export_onnx(model, args.output, rate, args.opset, check=False, with_lengths=args.with_lengths,
                           normalize=args.normalize)
        inputs = "waveform, lengths" if args.with_lengths else "waveform"
        message = f"{path}: exported from {source} (inputs {inputs}; output embedding" + \
                  (", L2-normalised)" if args.normalize else ")")
        if not args.no_check:
            message += f"; onnxruntime max |diff| {verify_onnx(model, path, rate):.1e}"
            if args.with_lengths:
                cosine = padding_cosine(model, path, random_waveforms(rate))
                message += f"; padded batch vs alone: min cosine {cosine:.6f}"
        print(message)

    return run_command(run)


def average_main(argv: list[str] | None = None) -> int:
    """sslsv average RUN --epochs 10 -o avg.pt: average the last N epochs' weights of a run."""
    parser = argparse.ArgumentParser(prog="sslsv average",
                                     description="Average the weights of a run's last N epochs.")
    parser.add_argument("run", help="run directory")
    parser.add_argument("--epochs", type=int, default=10, help="number of most recent epoch weights (default 10)")
    parser.add_argument("--last", type=int, dest="epochs", help=argparse.SUPPRESS)  # the older spelling
    parser.add_argument("-o", "--output", help="output weight file (default RUN/model_avg.pt)")
    args = parser.parse_args(argv)

    def run() -> None:
        from sslsv.export import average_checkpoints, last_epoch_weights
        from sslsv.runs import RunLayout

        paths = last_epoch_weights(args.run, args.epochs)
        out = average_checkpoints(paths, args.output or RunLayout(args.run).model_average)
        print(f"{out}: mean of {', '.join(p.name for p in paths)}")

    return run_command(run)
