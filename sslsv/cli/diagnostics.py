"""`sslsv diagnostics`: plot a run's collapse diagnostics over training steps."""
from __future__ import annotations

import argparse

from sslsv.cli.errors import run_command


def main(argv: list[str] | None = None) -> int:
    """sslsv diagnostics RUN [-o PNG]."""
    parser = argparse.ArgumentParser(
        prog="sslsv diagnostics",
        description="Plot the loss and every train/* signal of a run's metrics.jsonl over training steps.")
    parser.add_argument("run", help="run directory")
    parser.add_argument("-o", "--output", help="PNG path (default RUN/diagnostics.png)")
    args = parser.parse_args(argv)

    def run() -> None:
        from sslsv.training.diagnostics import plot_diagnostics

        print(plot_diagnostics(args.run, args.output))

    return run_command(run)
