"""`sslsv demo-corpus`: build the synthetic espeak-ng demo corpus (VoxCeleb layout), optionally with its baseline."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sslsv.cli.errors import run_command
from sslsv.data.demo import DemoCorpusConfig, build_demo_corpus


def build_parser() -> argparse.ArgumentParser:
    defaults = DemoCorpusConfig()
    parser = argparse.ArgumentParser(
        prog="sslsv demo-corpus",
        description="Build a deterministic, seedable synthetic speaker corpus in VoxCeleb layout with espeak-ng.",
    )
    parser.add_argument("-o", "--output", "--out", dest="out", default="data/demo",
                        help="output folder (its parent is the data root)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--train-speakers", type=int, default=defaults.train_speakers)
    parser.add_argument("--val-speakers", type=int, default=defaults.val_speakers)
    parser.add_argument("--test-speakers", type=int, default=defaults.test_speakers)
    parser.add_argument("--sessions", type=int, default=defaults.sessions_per_speaker, help="sessions per speaker")
    parser.add_argument("--utterances", type=int, default=defaults.utterances_per_session,
                        help="utterances per session")
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--baseline", action="store_true", help="also print the spectral-statistics baseline EER")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def summary(out: Path, seconds: float) -> str:
    """One line of counts from <out>/corpus.json."""
    counts = json.loads((out / "corpus.json").read_text())["counts"]
    speakers = counts["speakers"]
    minutes = sum(counts["seconds"].values()) / 60
    return (
        f"demo corpus {out}: {sum(speakers.values())} speakers "
        f"({speakers['train']} train / {speakers['val']} val / {speakers['test']} test), "
        f"{sum(counts['utterances'].values())} utterances, {minutes:.1f} min, "
        f"{counts['trials']['trials.txt']} test trials, "
        f"{seconds:.1f} s"
    )


def main(argv: list[str] | None = None) -> int:
    """Build the corpus (idempotent), print one line of counts and optionally the spectral-baseline EER."""
    args = build_parser().parse_args(argv)

    def run() -> None:
        config = DemoCorpusConfig(
            train_speakers=args.train_speakers,
            val_speakers=args.val_speakers,
            test_speakers=args.test_speakers,
            sessions_per_speaker=args.sessions,
            utterances_per_session=args.utterances,
            seed=args.seed,
            workers=args.workers,
        )
        start = time.time()
        out = build_demo_corpus(args.out, config, progress=not args.quiet)
        print(summary(out, time.time() - start))
        if args.baseline:
            # imported only when asked for: it loads torchaudio (and torch), which the build itself does not need
            from sslsv.evaluation.baselines import spectral_baseline_eer

            print(f"spectral baseline EER (mean log-mel, cosine): {spectral_baseline_eer(out):.2f} %")

    return run_command(run)
