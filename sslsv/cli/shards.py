"""`sslsv shards`: write a manifest as tar shards for streaming training (sslsv.data.shards), or verify them."""
from __future__ import annotations

import argparse

from sslsv.cli.errors import run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslsv shards",
        description="Write a manifest's utterances as tar shards (<key>.wav + <key>.spk members, wespeaker's "
                    "layout) with shard.list, shards.json (counts, SHA-256) under -o; train on them with "
                    "dataset.shards=DIR/shard.list (relative to dataset.data_root). Rerunning the same command "
                    "keeps the complete shards and rewrites missing or corrupted ones.")
    parser.add_argument("manifest", help="manifest CSV (File,Speaker,...)")
    parser.add_argument("-o", "--output", required=True, help="folder of the shards (created)")
    parser.add_argument("--data-root", default="data", help="folder the manifest's File column is relative to "
                                                            "(default data)")
    parser.add_argument("--utts-per-shard", type=int, default=1000, help="utterances per shard (default 1000)")
    parser.add_argument("--workers", type=int, default=4, help="shards written in parallel (default 4)")
    parser.add_argument("--sample-rate", type=int, default=16000,
                        help="rate of the stored WAVs; other files are resampled (default 16000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle of utterances over shards "
                                                            "(default 0)")
    parser.add_argument("--verify", action="store_true",
                        help="only recompute the checksums of the shards under -o (exit status 2 on a mismatch)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.utts_per_shard < 1:
        parser.error("--utts-per-shard must be >= 1")
    if args.workers < 1:
        parser.error("--workers must be >= 1")

    def run() -> None:
        from pathlib import Path

        from sslsv.data.manifest import ManifestError, read_manifest
        from sslsv.data.shards import LIST_FILE, verify_shards, write_shards

        if args.verify:
            problems = verify_shards(Path(args.output) / LIST_FILE)
            for line in problems:
                print(line)
            if problems:
                raise ManifestError(f"{args.output}: {len(problems)} shard(s) failed verification (listed above)")
            print(f"{args.output}: every shard matches its checksum")
            return
        report = write_shards(read_manifest(args.manifest), args.data_root, args.output, args.utts_per_shard,
                              args.workers, args.sample_rate, args.seed)
        print(report.summary())

    return run_command(run)
