"""Command-line entry points: train.py, evaluate.py and the `sslsv` command.

User errors (bad config, unusable data, missing run) print one clear message and exit with status 2;
a traceback means a bug.
"""
from __future__ import annotations

import argparse
import sys

from sslsv.config import ConfigError
from sslsv.registry import RegistryError, describe


def _user_errors():
    from sslsv.audio.augment import AugmentationError
    from sslsv.audio.io import AudioError
    from sslsv.data.manifest import ManifestError
    from sslsv.data.trials import TrialsError
    from sslsv.evaluation.evaluate import RunError
    from sslsv.training.trainer import TrainingError

    return (ConfigError, RegistryError, ManifestError, TrialsError, AudioError, AugmentationError, RunError,
            TrainingError, FileNotFoundError)


def _run(function, *args) -> int:
    try:
        function(*args)
    except _user_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    return 0


def train_main(argv: list[str] | None = None) -> int:
    """Train a speaker encoder: sslsv train CONFIG [key.sub=value ...] (same as python train.py)."""
    parser = argparse.ArgumentParser(
        prog="train.py", description="Train a speaker encoder with any registered method.",
        epilog="Overrides use dotted keys: trainer.epochs=3 dataset.batch_size=64 encoder.pooling=asp",
    )
    parser.add_argument("config", nargs="?", help="YAML config, e.g. configs/simclr/fast_resnet34.yml")
    parser.add_argument("overrides", nargs="*", help="key.subkey=value")
    parser.add_argument("--list", action="store_true", help="print the registered encoders, methods, poolings, trial sets")
    parser.add_argument("--restart", action="store_true", help="ignore existing checkpoints and start over")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the resolved config, then stop")
    args = parser.parse_intermixed_args(argv)  # options may stand between the overrides
    if args.list:
        print(describe())
        return 0
    if not args.config:
        parser.error("a config file is required (or --list)")

    def run() -> None:
        import yaml

        from sslsv.config import load_config
        from sslsv.training import distributed
        from sslsv.training.trainer import Trainer

        config = load_config(args.config, args.overrides)
        if args.dry_run:
            print(yaml.safe_dump(config.to_dict(), sort_keys=False))
            return
        trainer = Trainer(config, restart=args.restart)
        try:
            summary = trainer.fit()
        finally:
            distributed.cleanup()
        if distributed.is_main():
            print(f"finished: {summary.get('epochs')} epochs, {summary.get('steps')} steps -> {config.run_dir}")

    return _run(run)


def evaluate_main(argv: list[str] | None = None) -> int:
    """Evaluate a run on trial lists: sslsv evaluate [RUN] --trials vox1_O (same as python evaluate.py)."""
    parser = argparse.ArgumentParser(
        prog="evaluate.py", description="Evaluate a trained run on trial lists.",
        epilog="Example: python evaluate.py models/simclr/fast_resnet34 --trials vox1_O --norm asnorm --crops 10 "
               "--crop-seconds 4 --compare models/dino/ecapa")
    parser.add_argument("run", nargs="?", help="run directory (default: the most recent run under models/)")
    parser.add_argument("--trials", nargs="+", help="trial-set names (vox1_O vox1_E vox1_H demo) or trial files")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--last", action="store_true", help="use the last epoch's weights instead of the average")
    weights.add_argument("--best", action="store_true",
                         help="use model_best.pt, the weights of the best validation score (trainer.tracked_metric)")
    parser.add_argument("--random-baseline", action="store_true",
                        help="also evaluate the same encoder with its random initial weights")
    parser.add_argument("--device", default="auto")
    backend = parser.add_argument_group("back-ends")
    backend.add_argument("--norm", nargs="+", default=["none"], choices=["none", "znorm", "tnorm", "snorm", "asnorm"],
                         help="score normalisation(s) against a cohort of the run's training utterances; each one "
                              "is an extra back-end next to the plain scores")
    backend.add_argument("--cohort-size", type=int, default=6000,
                         help="random training utterances in the cohort, seeded (0 = all; default 6000)")
    backend.add_argument("--cohort-seed", type=int, default=0, help="seed of the cohort draw")
    backend.add_argument("--top-n", type=int, default=300, help="cohort scores kept per utterance by AS-norm")
    backend.add_argument("--cohort-labels", action="store_true",
                         help="average the cohort per speaker (uses speaker labels: not a pure SSL result)")
    backend.add_argument("--crops", type=int, metavar="N",
                         help="score with N evenly spaced crops per utterance (mean of the N x N cosine matrix) "
                              "instead of full-length embeddings")
    backend.add_argument("--crop-seconds", type=float, metavar="L", help="crop length in seconds (default 3)")
    parser.add_argument("--compare", nargs="+", metavar="RUN",
                        help="other runs scored the same way: one DET figure det_<trials>_compare.png, a row each")
    args = parser.parse_args(argv)
    if args.crop_seconds is not None and args.crops is None:
        parser.error("--crop-seconds needs --crops N")

    def run() -> None:
        from sslsv.evaluation.evaluate import Backends, evaluate_run, latest_run

        backends = Backends(norms=tuple(args.norm), cohort_size=args.cohort_size or None, top_n=args.top_n,
                            cohort_labels=args.cohort_labels, cohort_seed=args.cohort_seed, crops=args.crops,
                            crop_seconds=args.crop_seconds if args.crop_seconds is not None else 3.0)
        run_dir = args.run or latest_run()
        print(f"evaluating {run_dir}")
        evaluate_run(run_dir, args.trials, use_average=False if args.last else None, device=args.device,
                     random_baseline=args.random_baseline, backends=backends, compare=args.compare, best=args.best)

    return _run(run)


def main(argv: list[str] | None = None) -> int:
    """`sslsv` command: sslsv {train,evaluate,demo-corpus,check-manifest,list} ..."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from sslsv.cli_tools import average_main, embed_main, export_main, fuse_main, prepare_main, score_main

    commands = {
        "train": train_main,
        "evaluate": evaluate_main,
        "demo-corpus": _demo_corpus,
        "prepare": prepare_main,
        "check-manifest": _check_manifest,
        "embed": embed_main,
        "score": score_main,
        "fuse": fuse_main,
        "export": export_main,
        "average": average_main,
        "pseudo-label": _pseudo_label,
        "finetune": _finetune,
        "analyze": _analyze,
        "profile": _profile,
        "diagnostics": _diagnostics,
        "list": _list,
    }
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: sslsv {" + ",".join(commands) + "} ...")
        for name, function in commands.items():
            print(f"  {name:<15} {(function.__doc__ or '').strip().splitlines()[0] if function.__doc__ else ''}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return commands[argv[0]](argv[1:])


def _pseudo_label(argv: list[str]) -> int:
    """Pseudo-label a manifest with a trained run: k-means (+ AHC), filtering, labelled manifest."""
    from sslsv.pseudo_labels.multistage import pseudo_label_main

    return pseudo_label_main(argv)


def _finetune(argv: list[str]) -> int:
    """Label-efficient fine-tuning: supervised runs on labelled fractions, from the SSL weights vs from scratch."""
    from sslsv.evaluation.finetune import finetune_main

    return finetune_main(argv)


def _analyze(argv: list[str]) -> int:
    """SRR and NMI of a run's embeddings of a labelled manifest (review Eq. 14-15), plus a 2-D projection plot."""
    parser = argparse.ArgumentParser(prog="sslsv analyze")
    parser.add_argument("run")
    parser.add_argument("--manifest", required=True, help="labelled manifest relative to the data root, e.g. demo/test.csv")
    parser.add_argument("--projection", choices=["pca", "tsne"], default="pca")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    def run() -> None:
        from pathlib import Path

        from sslsv.data.manifest import read_manifest
        from sslsv.evaluation.analysis import plot_projection, speaker_recording_ratio
        from sslsv.evaluation.embeddings import extract_embeddings
        from sslsv.evaluation.evaluate import load_model

        model, config, source = load_model(args.run, device=args.device)
        root = Path(config.dataset.data_root)
        manifest = read_manifest(root / args.manifest)
        embeddings = extract_embeddings(model, [str(root / f) for f in manifest.files], config.features.sample_rate,
                                        args.device, batch_seconds=config.evaluation.batch_seconds,
                                        max_trim=config.evaluation.max_trim)
        result = speaker_recording_ratio(embeddings, manifest.speakers, manifest.sessions)
        out = Path(args.run) / f"projection_{Path(args.manifest).stem}.png"
        plot_projection(embeddings, manifest.speakers, out, method=args.projection)
        print(f"{args.run} ({source}) on {args.manifest}: {len(manifest)} utterances, k-means with {result.num_clusters} clusters")
        print(f"NMI(speaker) {result.nmi_speakers:.4f}  NMI(recording) {result.nmi_recordings:.4f}  SRR {result.srr:.3f}")
        print(f"projection: {out}")

    return _run(run)


def _profile(argv: list[str]) -> int:
    """Parameters and MACs per second of audio of a config's encoder: sslsv profile CONFIG [key=value ...]."""
    parser = argparse.ArgumentParser(prog="sslsv profile")
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--seconds", type=float, default=2.0, help="input length used for counting")
    args = parser.parse_args(argv)

    def run() -> None:
        from sslsv.config import load_config
        from sslsv.encoders.base import build_encoder
        from sslsv.encoders.profile import profile_encoder

        config = load_config(args.config, args.overrides)
        encoder = build_encoder(config.encoder, config.features)
        figures = profile_encoder(encoder, seconds=args.seconds, sample_rate=config.features.sample_rate,
                                  n_mels=config.features.n_mels)
        views = config.dataset.views
        sample_seconds = sum(g.count * g.seconds for g in views)
        print(f"encoder        {config.encoder.name} ({config.features.n_mels} mels)")
        print(f"parameters     {figures['params']:,} (trainable {figures['trainable']:,})")
        print(f"GMACs / s      {figures['macs_per_second'] / 1e9:.3f}  (conv + linear layers, measured on {args.seconds:g} s)")
        print(f"GMACs / sample {figures['macs_per_second'] * sample_seconds / 1e9:.3f}  (forward, all views: "
              f"{sample_seconds:g} s of audio; FLOPs ~ 2 x MACs)")

    return _run(run)


def _diagnostics(argv: list[str]) -> int:
    """Plot a run's collapse diagnostics over training steps: sslsv diagnostics RUN [--out PNG]."""
    parser = argparse.ArgumentParser(prog="sslsv diagnostics")
    parser.add_argument("run")
    parser.add_argument("--out", default=None, help="PNG path (default RUN/diagnostics.png)")
    args = parser.parse_args(argv)

    def run() -> None:
        from sslsv.training.diagnostics import plot_diagnostics

        print(plot_diagnostics(args.run, args.out))

    return _run(run)


def _list(argv: list[str]) -> int:
    """Print the registered encoders, methods, poolings and trial sets."""
    print(describe())
    return 0


def _demo_corpus(argv: list[str]) -> int:
    """Build the synthetic demo corpus (VoxCeleb layout) under data/demo."""
    from sslsv.data.demo import main as demo_main

    return demo_main(argv)


def _check_manifest(argv: list[str]) -> int:
    """Check every file of a manifest: missing, empty, unreadable, wrong rate, too short."""
    parser = argparse.ArgumentParser(prog="sslsv check-manifest")
    parser.add_argument("manifest")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--min-seconds", type=float, default=0.0)
    parser.add_argument("--strict-rate", action="store_true", help="report files whose rate differs")
    args = parser.parse_args(argv)

    def run() -> None:
        from sslsv.data.manifest import check_manifest, read_manifest

        manifest = read_manifest(args.manifest)
        durations = check_manifest(manifest, args.data_root, args.sample_rate, args.min_seconds,
                                   allow_resample=not args.strict_rate)
        print(f"{args.manifest}: {len(manifest)} files OK, {sum(durations) / 3600:.2f} h")

    return _run(run)


if __name__ == "__main__":
    raise SystemExit(main())
