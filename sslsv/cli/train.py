"""`sslsv train` (and python train.py): train a speaker encoder with any registered method."""
from __future__ import annotations

import argparse

from sslsv.cli.errors import run_command


def build_parser(prog: str = "sslsv train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Train a speaker encoder with any registered method.",
        epilog="Overrides use dotted keys: trainer.epochs=3 dataset.batch_size=64 encoder.pooling=asp",
    )
    parser.add_argument("config", nargs="?", help="YAML config, e.g. configs/simclr/fast_resnet34.yml")
    parser.add_argument("overrides", nargs="*", help="key.subkey=value")
    parser.add_argument("--list", action="store_true", help="print the registered encoders, methods, poolings, trial sets")
    parser.add_argument("--restart", action="store_true", help="ignore existing checkpoints and start over")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the resolved config, then stop")
    return parser


def main(argv: list[str] | None = None, prog: str = "sslsv train") -> int:
    """Train a speaker encoder: sslsv train CONFIG [key.sub=value ...]."""
    parser = build_parser(prog)
    args = parser.parse_intermixed_args(argv)  # options may stand between the overrides
    if not args.list and not args.config:
        parser.error("a config file is required (or --list)")

    def run() -> None:
        if args.list:
            from sslsv.registry import describe

            print(describe())
            return
        import yaml

        from sslsv import distributed
        from sslsv.config import load_config
        from sslsv.evaluation.validation import build_trainer

        config = load_config(args.config, args.overrides)
        if args.dry_run:
            print(yaml.safe_dump(config.to_dict(), sort_keys=False))
            return
        trainer = build_trainer(config, restart=args.restart)
        main_process = distributed.is_main()  # asked before cleanup(), after which every rank reads as rank 0
        try:
            summary = trainer.fit()
        finally:
            distributed.cleanup()
        if main_process and not summary.get("already_finished"):  # a finished run has said so itself
            print(f"finished: {summary.get('epochs')} epochs, {summary.get('steps')} steps -> {config.run_dir}")

    return run_command(run)
