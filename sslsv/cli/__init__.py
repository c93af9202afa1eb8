"""The `sslsv` command line: one dispatcher, one module per command or group of commands.

`sslsv <subcommand> [options]`; `sslsv -h` lists the subcommands, `sslsv <subcommand> -h` shows their options.
Every subcommand returns an exit status: 0 on success, 2 on a user error (one `error: ...` message on stderr, see
sslsv.cli.errors), 130 on Ctrl-C. The subcommand modules are imported only when their command runs, so that
`sslsv -h` stays fast. This package is the only place where argparse is used; library modules never import it.
"""
from __future__ import annotations

import difflib
import importlib
import os
import sys
from typing import Callable, Sequence

__all__ = ["COMMANDS", "PROCESS_ENVIRONMENT", "main", "version"]

# Set for every command before torch is imported (it is read when PyTorch's OpenMP runtime starts); a value the
# user exported wins. GNU OpenMP's default (ACTIVE) makes PyTorch's intra-op threads spin between parallel regions;
# a training or an extraction always shares the cores with its own loader workers, and spinning threads then take
# the cores the workers and the other thread need: measured on 2 cores, 6.4x the CPU seconds of a forward and
# backward under load, and 3 % fewer samples/s on an idle machine (docs/benchmarks.md, "Training step").
PROCESS_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE"}
for _name, _value in PROCESS_ENVIRONMENT.items():
    os.environ.setdefault(_name, _value)

# name -> (module under sslsv.cli, function taking argv and returning an exit status, one-line summary)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("train", "main", "train a speaker encoder from a YAML config (same as python train.py)"),
    "evaluate": ("evaluate", "main", "evaluate a run on trial lists (same as python evaluate.py)"),
    "demo-corpus": ("demo_corpus", "main", "build the synthetic espeak-ng demo corpus (VoxCeleb layout)"),
    "prepare": ("data", "prepare_main", "prepare VoxCeleb1/2, MUSAN or RIRs under a data root"),
    "check-manifest": ("data", "check_manifest_main", "check every file of a manifest (missing, unreadable, ...)"),
    "shards": ("shards", "main", "write a manifest as tar shards for streaming training (wespeaker layout)"),
    "embed": ("run_tools", "embed_main", "embed audio files (or a wav.scp) with a trained run: npy, npz or "
                                         "Kaldi ark/scp"),
    "score": ("run_tools", "score_main", "cosine score of two audio files with a trained run, and a decision"),
    "score-trials": ("scoring", "score_trials_main", "cosine scores of a trial list from stored embeddings"),
    "metrics": ("scoring", "metrics_main", "EER, minDCF, actDCF, Cllr and a DET plot of a score file"),
    "fuse": ("fuse", "main", "calibrate one run's scores or fuse several runs' scores (logistic regression)"),
    "export": ("run_tools", "export_main", "export a run's embedding model to ONNX"),
    "average": ("run_tools", "average_main", "average the weights of a run's last N epochs"),
    "pseudo-label": ("pseudo_labels", "pseudo_label_main", "pseudo-label a manifest with a trained run"),
    "multistage": ("pseudo_labels", "multistage_main", "multi-stage pseudo-labelling: SSL run, then rounds of "
                                                       "clustering and supervised training"),
    "finetune": ("pseudo_labels", "finetune_main", "label-efficient fine-tuning on labelled fractions"),
    "analyze": ("analyze", "main", "SRR and NMI of a run's embeddings of a labelled manifest, 2-D projection"),
    "profile": ("profile", "main", "parameters and MACs per second of audio of a config's encoder"),
    "diagnostics": ("diagnostics", "main", "plot a run's collapse diagnostics over training steps"),
    "list": ("listing", "main", "print the registered encoders, methods, poolings and trial sets"),
}


def version() -> str:
    """The installed package version (the source tree's setup.py version when not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("sslsv")
    except PackageNotFoundError:
        return "unknown"


def usage() -> str:
    lines = ["usage: sslsv [-h] [--version] <subcommand> [options]", "",
             "Self-supervised speaker verification. `sslsv <subcommand> -h` shows a subcommand's options.", "",
             "subcommands:"]
    lines += [f"  {name:<15} {summary}" for name, (_, _, summary) in COMMANDS.items()]
    lines += ["", "options:", "  -h, --help      show this message and exit",
              "  --version       print the sslsv version and exit"]
    return "\n".join(lines)


def command(name: str) -> Callable[[list[str]], int]:
    """The function behind a subcommand (imported on demand)."""
    module, function, _ = COMMANDS[name]
    return getattr(importlib.import_module(f"sslsv.cli.{module}"), function)


def _error(message: str) -> int:
    print("usage: sslsv [-h] [--version] <subcommand> [options]", file=sys.stderr)
    print(f"sslsv: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """The `sslsv` command: dispatch argv[0] to its subcommand and return the exit status."""
    from sslsv.cli.errors import quiet_broken_pipe, run_command

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        return _error("a subcommand is required (" + ", ".join(COMMANDS) + "); see sslsv -h")
    name, rest = argv[0], argv[1:]
    if name in ("-h", "--help"):
        return run_command(lambda: print(usage()))
    if name == "--version":
        return run_command(lambda: print(f"sslsv {version()}"))
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else f" (choose from {', '.join(COMMANDS)})"
        kind = "option" if name.startswith("-") else "subcommand"
        return _error(f"unknown {kind} '{name}'{hint}")
    try:
        return command(name)(rest)
    except BrokenPipeError:  # e.g. `sslsv train -h | head`: argparse printed its help outside run_command
        quiet_broken_pipe()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
