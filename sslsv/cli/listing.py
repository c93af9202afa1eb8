"""`sslsv list`: the registered encoders, methods, poolings and trial sets."""
from __future__ import annotations

import argparse

from sslsv.cli.errors import run_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sslsv list",
                                     description="Print the registered encoders, methods, poolings and trial sets.")
    parser.parse_args(argv)

    def run() -> None:
        from sslsv.registry import describe

        print(describe())

    return run_command(run)
