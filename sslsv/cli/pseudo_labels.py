"""Pseudo-labelling and label-efficient commands: `sslsv pseudo-label`, `sslsv multistage`, `sslsv finetune`."""
from __future__ import annotations

import argparse

from sslsv.cli.errors import run_command
from sslsv.cli.options import add_extraction_options, add_weights_option, weights_choice

DEVICE_HELP = "auto, cpu, cuda or cuda:N (default auto)"


def build_multistage_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslsv multistage",
        description="Multi-stage pseudo-labelling: SSL run, then rounds of clustering and supervised training. "
                    "Rerun the same command to resume.")
    parser.add_argument("config", help="multistage YAML, e.g. configs/multistage/demo.yml")
    parser.add_argument("overrides", nargs="*", help="key.subkey=value (e.g. workdir=models/ms_try)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def multistage_main(argv: list[str] | None = None) -> int:
    """sslsv multistage CONFIG [key=value ...]: the whole multi-stage pseudo-labelling pipeline (resumable)."""
    args = build_multistage_parser().parse_intermixed_args(argv)

    def run() -> None:
        from sslsv import distributed
        from sslsv.pseudo_labels.multistage import load_multistage_config, run_multistage
        from sslsv.registry import load_all

        load_all()
        config = load_multistage_config(args.config, args.overrides)
        try:
            run_multistage(config, progress=not args.no_progress)
        finally:
            distributed.cleanup()

    return run_command(run)


def build_pseudo_label_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslsv pseudo-label",
        description="Pseudo-label a manifest with a trained run: extraction, k-means (+ AHC), filtering, "
                    "labelled manifest.")
    parser.add_argument("run", help="trained run directory")
    parser.add_argument("--kmeans", type=int, default=50000, help="k-means clusters (default 50000)")
    parser.add_argument("--ahc", type=int, default=7500, help="AHC target classes; 0: plain k-means (default 7500)")
    parser.add_argument("--linkage", choices=["ward", "average"], default="ward", help="AHC linkage (default ward)")
    parser.add_argument("--ahc-neighbors", type=int, default=32, help="kNN graph size for AHC; 0: exact linkage")
    parser.add_argument("--iterations", type=int, default=20, help="k-means iterations (default 20)")
    parser.add_argument("--manifest", help="manifest relative to the data root (default: the run's training manifest)")
    parser.add_argument("--data-root", help="default: the run's data root")
    parser.add_argument("-o", "--output", help="output folder (default: RUN/pseudo_labels)")
    parser.add_argument("--drop-fraction", type=float, default=0.0, help="drop the least confident fraction")
    parser.add_argument("--min-cluster-size", type=int, default=1, help="drop clusters smaller than this")
    parser.add_argument("--crop-seconds", type=float, help="embed one fixed crop per file instead of full length")
    parser.add_argument("--shard-size", type=int, default=50000, help="embeddings per saved shard (default 50000)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_extraction_options(parser, named_apart=False)
    parser.add_argument("--no-labels", action="store_true", help="the Speaker column is not the true speaker")
    parser.add_argument("--force", action="store_true",
                        help="replace the train.csv and summary.json of an earlier pseudo-labelling in the output "
                             "folder; without it they are refused before any work")
    parser.add_argument("--no-cache", action="store_true",
                        help="embed every file again instead of reusing RUN/embedding_cache")
    return parser


def pseudo_label_main(argv: list[str] | None = None) -> int:
    """sslsv pseudo-label RUN [--kmeans K --ahc C ...]: one-shot pseudo-labelling of a manifest."""
    args = build_pseudo_label_parser().parse_args(argv)

    def run() -> None:
        import json
        from pathlib import Path

        from sslsv import distributed
        from sslsv.distributed import resolve_device
        from sslsv.evaluation.embeddings import embedding_cache
        from sslsv.evaluation.evaluate import check_new_outputs
        from sslsv.pseudo_labels.clustering import ClusteringConfig
        from sslsv.pseudo_labels.extract import ExtractionConfig
        from sslsv.pseudo_labels.filtering import FilteringConfig
        from sslsv.pseudo_labels.multistage import pseudo_label_run
        from sslsv.runs import RunLayout, load_run_config

        load_run_config(args.run)  # a missing run is named before the output check
        layout = RunLayout(args.run)
        output = args.output or layout.pseudo_labels
        check_new_outputs([Path(output) / "train.csv", Path(output) / "summary.json"], args.force)
        distributed.init_distributed(resolve_device(args.device))
        extraction = ExtractionConfig(shard_size=args.shard_size, crop_seconds=args.crop_seconds, device=args.device,
                                      amp=args.amp, channels_last=args.channels_last, compile=args.compile)
        clustering = ClusteringConfig(method="kmeans_ahc" if args.ahc else "kmeans", kmeans_clusters=args.kmeans,
                                      num_classes=args.ahc or 2, linkage=args.linkage,
                                      ahc_neighbors=args.ahc_neighbors, iterations=args.iterations)
        filtering = FilteringConfig(args.drop_fraction, args.min_cluster_size)
        try:
            with embedding_cache(None if args.no_cache else layout.embedding_cache):
                metrics, out, data_root = pseudo_label_run(args.run, output, args.manifest, args.data_root,
                                                           extraction, clustering, filtering, not args.no_labels)
            if distributed.is_main():
                print(json.dumps({k: v for k, v in metrics.items() if k != "timings"}, indent=2))
                print(f"pseudo-labelled manifest: {out / 'train.csv'} (data root {data_root})")
        finally:
            distributed.cleanup()

    return run_command(run)


def build_finetune_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslsv finetune",
        description="Label-efficient fine-tuning: supervised (AAM-softmax) runs on speaker-stratified labelled "
                    "fractions of the run's training manifest, initialised from the SSL weights and from random "
                    "weights; prints and writes RUN/finetune/table.md.")
    parser.add_argument("run", help="self-supervised run directory")
    parser.add_argument("overrides", nargs="*", help="extra key.subkey=value for the fine-tuning runs")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.5, 1.0],
                        help="labelled fractions of the training manifest (default 0.1 0.5 1.0)")
    parser.add_argument("--epochs", type=int, required=True, help="epochs of each fine-tuning run")
    parser.add_argument("--trials", nargs="+", help="trial lists (default: the run's evaluation.trials)")
    parser.add_argument("--init", nargs="+", default=["ssl", "random"], choices=["ssl", "random"],
                        help="initialisations to compare (default: ssl random)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the labelled subsets")
    parser.add_argument("--classifier-init", choices=["centroids", "random"], default="centroids",
                        help="SSL-initialised runs: classifier rows from the labelled classes' SSL centroids "
                             "(default) or random")
    parser.add_argument("--freeze-epochs", type=float, default=1.0,
                        help="SSL-initialised runs: epochs with the encoder fixed while the head warms up (default 1, "
                             "at most half of --epochs)")
    parser.add_argument("--encoder-lr-scale", type=float, default=0.03,
                        help="SSL-initialised runs: the encoder's learning rate as a fraction of the head's "
                             "(default 0.03)")
    parser.add_argument("-o", "--output", help="output folder (default RUN/finetune)")
    add_weights_option(parser)
    parser.add_argument("--restart", action="store_true", help="retrain runs that already have checkpoints")
    return parser


def finetune_main(argv: list[str] | None = None) -> int:
    """sslsv finetune RUN --fractions 0.1 0.5 1.0 --epochs E [--trials demo] [key=value ...]."""
    args = build_finetune_parser().parse_intermixed_args(argv)

    def run() -> None:
        from sslsv.evaluation.finetune import FinetuneRecipe, finetune_run

        use_average, best = weights_choice(args)
        recipe = FinetuneRecipe(args.classifier_init, args.freeze_epochs, args.encoder_lr_scale)
        finetune_run(args.run, args.fractions, args.epochs, args.trials, args.output, args.seed, args.overrides,
                     tuple(args.init), args.restart, use_average=use_average, best=best, recipe=recipe)

    return run_command(run)
