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


def add_extraction_options(parser: argparse.ArgumentParser, named_apart: bool = True) -> None:
    """`--amp`, `--channels-last`, `--compile`: how embeddings are extracted; each defaults (None) to the run's
    evaluation.amp / evaluation.channels_last / evaluation.compile (sslsv.evaluation.evaluate.with_extraction).
    `named_apart`: the command names its outputs after a non-default setting (evaluate's _bf16, _nhwc, _compiled)."""
    apart = {
        "amp": "; outputs of bf16/fp16 are named apart (_bf16, _fp16), next to the float32 ones",
        "channels_last": "; CPU outputs are then named apart (_nhwc)",
        "compile": "; outputs are named apart (_compiled)",
    } if named_apart else {"amp": "", "channels_last": "", "compile": ""}
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"],
                        help="precision of the embedding extraction: float32 (none), bf16 or fp16 (CUDA only) "
                             "autocast (default: evaluation.amp of the run's config, none)" + apart["amp"])
    parser.add_argument("--channels-last", action="store_true", default=None,
                        help="extract with a channels_last (NHWC) model on a CPU too, for encoders that declare it "
                             "(Fast ResNet-34; default: evaluation.channels_last, NHWC on CUDA only)"
                             + apart["channels_last"])
    parser.add_argument("--compile", action="store_true", default=None,
                        help="torch.compile the encoder for the extraction (dynamic lengths): faster batches after "
                             "a one-off compilation of tens of seconds, worth it from a few thousand utterances "
                             "(default: evaluation.compile, off)" + apart["compile"])
