"""`sslsv fuse`: calibrate one run's scores or fuse several runs' scores (sslsv.evaluation.fusion)."""
from __future__ import annotations

import argparse

from sslsv.cli.errors import run_command
from sslsv.cli.options import add_weights_option, weights_choice


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslsv fuse",
        description="Calibrate / fuse runs' scores with logistic regression trained on a calibration trial list.")
    parser.add_argument("runs", nargs="+", help="one run (calibration) or several (fusion)")
    parser.add_argument("--trials", required=True, help="test trial-set name or file (e.g. vox1_O)")
    parser.add_argument("--calibration-trials", required=True,
                        help="trial file, utterance paths relative to --calibration-root (never the test list)")
    parser.add_argument("--calibration-root", help="folder of the calibration utterances (default: the data root)")
    parser.add_argument("--make-calibration", type=int, metavar="N",
                        help="first write N calibration trials from the first run's training manifest")
    parser.add_argument("--p-target", type=float, default=0.5, help="prior of the training objective (0.5 = Cllr)")
    parser.add_argument("-o", "--output", help="output folder (default: RUN1/fusion)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    add_weights_option(parser)
    parser.add_argument("--force", action="store_true",
                        help="replace existing outputs (<trials>.score/.json/_correlation.png, and the "
                             "--make-calibration file); without it they are refused before any work")
    parser.add_argument("--no-cache", action="store_true",
                        help="embed every file again instead of reusing each run's RUN/embedding_cache")
    return parser


def format_rows(systems: list[dict]) -> str:
    lines = [f"{'system':<48} {'EER (%)':>8} {'minDCF0.01':>11} {'minDCF0.05':>11}"]
    lines += [f"{row['system']:<48} {row['eer']:>8.2f} {row['min_dcf_001']:>11.4f} {row['min_dcf_005']:>11.4f}"
              for row in systems]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """sslsv fuse RUN [RUN ...] --trials T --calibration-trials CAL: calibration or fusion of runs' scores."""
    args = build_parser().parse_args(argv)

    def run() -> None:
        from sslsv.evaluation.fusion import fuse_runs

        use_average, best = weights_choice(args)
        result = fuse_runs(args.runs, args.trials, args.calibration_trials, calibration_root=args.calibration_root,
                           make_calibration=args.make_calibration, p_target=args.p_target, output=args.output,
                           device=args.device, progress=True, use_average=use_average, best=best,
                           overwrite=args.force, cache=not args.no_cache)
        print(format_rows(result["systems"]))
        weights = [round(w, 3) for w in result["calibration"]["weights"]]
        print(f"{result['name']}: EER {result['eer']:.2f} %, minDCF0.01 {result['min_dcf_001']:.4f}, "
              f"Cllr {result['cllr']:.3f} (min {result['min_cllr']:.3f}), weights {weights} -> {result['output']}")

    return run_command(run)
