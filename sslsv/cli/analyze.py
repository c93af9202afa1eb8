"""`sslsv analyze`: SRR and NMI of a run's embeddings of a labelled manifest, plus a 2-D projection plot.

The review: T. Lepage, R. Dehak, "Self-Supervised Learning for Speaker Recognition: A study and review",
2026, arXiv:2602.10829 (docs/references.md)."""
from __future__ import annotations

import argparse

from sslsv.cli.errors import run_command
from sslsv.cli.options import add_extraction_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslsv analyze",
        description="SRR and NMI of a run's embeddings of a labelled manifest (review Eq. 14-15), plus a 2-D "
                    "projection plot.")
    parser.add_argument("run", help="run directory")
    parser.add_argument("--manifest", required=True, help="labelled manifest relative to the data root, e.g. demo/test.csv")
    parser.add_argument("--projection", choices=["pca", "tsne"], default="pca", help="2-D projection (default pca)")
    parser.add_argument("-o", "--output",
                        help="projection PNG (default RUN/projection_<manifest stem>.png for pca, "
                             "RUN/projection_<manifest stem>_tsne.png for tsne)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    add_extraction_options(parser, named_apart=False)
    parser.add_argument("--force", action="store_true",
                        help="replace an existing projection PNG; without it, it is refused before any work")
    parser.add_argument("--no-cache", action="store_true",
                        help="embed every file again instead of reusing RUN/embedding_cache")
    return parser


def main(argv: list[str] | None = None) -> int:
    """sslsv analyze RUN --manifest demo/test.csv [--projection tsne]."""
    args = build_parser().parse_args(argv)

    def run() -> None:
        from pathlib import Path

        from sslsv.evaluation.run_analysis import analyze_run
        from sslsv.evaluation.embeddings import embedding_cache
        from sslsv.evaluation.evaluate import check_new_outputs
        from sslsv.runs import RunLayout, load_run_config

        load_run_config(args.run)  # a missing run is named before the output check
        layout = RunLayout(args.run)
        name = Path(args.manifest).stem + ("" if args.projection == "pca" else f"_{args.projection}")
        output = Path(args.output) if args.output else layout.projection_plot(name)
        check_new_outputs([output], args.force)
        with embedding_cache(None if args.no_cache else layout.embedding_cache):
            result = analyze_run(args.run, args.manifest, args.projection, args.device, output=output,
                                 amp=args.amp, channels_last=args.channels_last, compile=args.compile)
        srr = result.srr
        print(f"{args.run} ({result.source}) on {args.manifest}: {result.num_utterances} utterances, "
              f"k-means with {srr.num_clusters} clusters")
        print(f"NMI(speaker) {srr.nmi_speakers:.4f}  NMI(recording) {srr.nmi_recordings:.4f}  SRR {srr.srr:.3f}")
        print(f"projection: {result.projection}")

    return run_command(run)
