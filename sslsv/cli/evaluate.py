"""`sslsv evaluate` (and python evaluate.py): evaluate a trained run on trial lists."""
from __future__ import annotations

import argparse

from sslsv.cli.errors import run_command
from sslsv.cli.options import add_extraction_options, add_weights_option, weights_choice


def build_parser(prog: str = "sslsv evaluate") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Evaluate a trained run on trial lists.",
        epilog=f"Example: {prog} models/simclr/fast_resnet34 --trials vox1_O --norm asnorm --crops 10 "
               "--crop-seconds 4 --compare models/dino/ecapa; "
               f"{prog} models/simclr/fast_resnet34 --trials vox1_O --plda --plda-lda-dim 200")
    parser.add_argument("run", nargs="?", help="run directory (default: the most recent run under models/)")
    parser.add_argument("--trials", nargs="+",
                        help="trial-set names (vox1_O vox1_E vox1_H demo) or trial files (relative to the data root)")
    parser.add_argument("--audio-root", metavar="DIR",
                        help="folder the utterance paths of the trial lists are relative to (default: the data root "
                             "for a trial file, the set's own folder for a registered name); absolute paths in a "
                             "list are used as they are")
    add_weights_option(parser)
    parser.add_argument("--random-baseline", action="store_true",
                        help="also evaluate the same encoder with its random initial weights")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    add_extraction_options(parser)
    backend = parser.add_argument_group("back-ends")
    backend.add_argument("--norm", nargs="+", default=["none"], choices=["none", "znorm", "tnorm", "snorm", "asnorm"],
                         help="score normalisation(s) against a cohort of the run's training utterances; each one "
                              "is an extra back-end next to the plain scores")
    backend.add_argument("--cohort-size", type=int, default=6000,
                         help="random training utterances in the cohort, seeded (0 = all; default 6000)")
    backend.add_argument("--cohort-seed", type=int, default=0, help="seed of the cohort draw")
    backend.add_argument("--top-n", type=int, default=300, help="cohort scores kept per utterance by AS-norm")
    backend.add_argument("--cohort-labels", action="store_true",
                         help="average the cohort per speaker (uses speaker labels: not a pure SSL result)")
    backend.add_argument("--crops", type=int, metavar="N",
                         help="score with N evenly spaced crops per utterance (mean of the N x N cosine matrix) "
                              "instead of full-length embeddings")
    backend.add_argument("--crop-seconds", type=float, metavar="L", help="crop length in seconds (default 3)")
    backend.add_argument("--plda", action="store_true",
                         help="add a two-covariance PLDA back-end trained on the run's training manifest (uses its "
                              "speaker labels: not a pure SSL result; see --plda-manifest)")
    backend.add_argument("--plda-lda-dim", type=int, metavar="N",
                         help="LDA to N dimensions before the PLDA (at most training speakers - 1; default: no LDA)")
    backend.add_argument("--plda-manifest", metavar="CSV",
                         help="train the PLDA on this manifest's labels instead, e.g. a pseudo-label manifest "
                              "(RUN/pseudo_labels/train.csv); absolute or relative to the data root")
    backend.add_argument("--plda-iterations", type=int, default=10, metavar="K",
                         help="EM iterations of the PLDA training (default 10)")
    parser.add_argument("--compare", nargs="+", metavar="RUN",
                        help="other runs scored the same way: one DET figure det_<trials>_compare.png, a row each")
    parser.add_argument("--force", action="store_true",
                        help="replace outputs of an earlier evaluation with the same trials, back-ends and weights "
                             "(score files, results.json entries, plots); without it they are refused before any work")
    parser.add_argument("--no-cache", action="store_true",
                        help="embed every file again instead of reusing RUN/embedding_cache (nothing is stored)")
    return parser


def main(argv: list[str] | None = None, prog: str = "sslsv evaluate") -> int:
    """Evaluate a run on trial lists: sslsv evaluate [RUN] --trials vox1_O."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.crop_seconds is not None and args.crops is None:
        parser.error("--crop-seconds needs --crops N")
    if not args.plda and (args.plda_lda_dim is not None or args.plda_manifest is not None):
        parser.error("--plda-lda-dim and --plda-manifest need --plda")

    def run() -> None:
        from sslsv.evaluation.evaluate import Backends, evaluate_run
        from sslsv.runs import latest_run

        backends = Backends(norms=tuple(args.norm), cohort_size=args.cohort_size or None, top_n=args.top_n,
                            cohort_labels=args.cohort_labels, cohort_seed=args.cohort_seed, crops=args.crops,
                            crop_seconds=args.crop_seconds if args.crop_seconds is not None else 3.0,
                            plda=args.plda, plda_lda_dim=args.plda_lda_dim, plda_manifest=args.plda_manifest,
                            plda_iterations=args.plda_iterations)
        run_dir = args.run or latest_run()
        print(f"evaluating {run_dir}")
        evaluate_run(run_dir, args.trials, use_average=False if args.weights == "last" else None, device=args.device,
                     random_baseline=args.random_baseline, backends=backends, compare=args.compare,
                     best=args.weights == "best", audio_root=args.audio_root, overwrite=args.force,
                     cache=not args.no_cache, amp=args.amp, channels_last=args.channels_last,
                     compile=args.compile)

    return run_command(run)
