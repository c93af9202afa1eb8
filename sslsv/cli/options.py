"""Options that several `sslsv` commands share, spelled once."""
from __future__ import annotations

import argparse

WEIGHTS_HELP = ("which weights of the run: avg (model_avg.pt, the mean of the last epochs, when present; the "
                "default), last (the last epoch's) or best (model_best.pt, the best validation score)")


def add_weights_option(parser: argparse.ArgumentParser) -> None:
    """`--weights {avg,last,best}`; the older `--last` / `--best` flags still parse, hidden from the help."""
    parser.add_argument("--weights", choices=("avg", "last", "best"), default="avg", help=WEIGHTS_HELP)
    parser.add_argument("--last", dest="weights", action="store_const", const="last", help=argparse.SUPPRESS)
    parser.add_argument("--best", dest="weights", action="store_const", const="best", help=argparse.SUPPRESS)


def weights_choice(args: argparse.Namespace) -> tuple[bool, bool]:
    """(use_average, best) for sslsv.runs.load_model and the commands built on it."""
    return args.weights != "last", args.weights == "best"
