"""`sslsv score-trials` (cosine scores of a trial list from stored embeddings) and `sslsv metrics` (EER, minDCF,
actDCF, Cllr and a DET plot of an existing score file). Neither loads a model; formats: sslsv.evaluation.embedding_io.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sslsv.cli.errors import run_command

DEFAULT_P_TARGETS = (0.01, 0.05)


def _check_output(path: Path, force: bool, what: str) -> None:
    """Refuse an output that exists (unless force) or is a folder, before any work."""
    if path.is_dir():
        raise FileExistsError(f"{what} {path} is a directory; give a file name")
    if path.exists() and not force:
        raise FileExistsError(f"{what} {path} exists; pass --force to replace it")


def _trial_list(name: str, data_root: str):
    """A trial file, or a registered trial-set name (vox1_O, demo ...) looked up under `data_root`."""
    from sslsv.data.trials import TrialSet  # noqa: F401  (registers the trial sets)
    from sslsv.evaluation.embedding_io import read_trial_pairs
    from sslsv.registry import TRIAL_SETS

    if not Path(name).is_file() and name in TRIAL_SETS:
        return read_trial_pairs(Path(data_root) / TRIAL_SETS.get(name).obj.path)
    return read_trial_pairs(name)


def _metrics_line(scores, labels) -> str:
    from sslsv.evaluation.metrics import compute_metrics

    m = compute_metrics(scores, labels)
    return (f"EER {m.eer:.2f} %, minDCF0.01 {m.min_dcf_001:.4f}, minDCF0.05 {m.min_dcf_005:.4f} "
            f"({m.num_trials} trials, {m.num_targets} target)")


# ------------------------------------------------------------------------------------------------ score-trials


def build_score_trials_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslsv score-trials",
        description="Cosine scores of a trial list from stored embeddings (no model is loaded); EER and minDCF "
                    "when the list has labels.",
        epilog="Example: sslsv score-trials emb.npz --trials data/demo/trials.txt -o scores.txt")
    parser.add_argument("embeddings", help="embedding file: .npy (keys in the .txt beside it, or --keys), .npz "
                                           "(arrays 'embeddings' and 'keys'), or Kaldi .ark / .scp")
    parser.add_argument("--trials", required=True,
                        help="trial list: 'label enroll test' (VoxCeleb), 'enroll test target|nontarget' (Kaldi) "
                             "or label-free 'enroll test' lines; or a registered trial-set name under --data-root")
    parser.add_argument("--keys", metavar="FILE", help="keys of a .npy, one per row (default: its .txt file)")
    parser.add_argument("-o", "--output", help="score file to write: 'enroll test score label' per line "
                                               "('enroll test score' for a label-free list)")
    parser.add_argument("--force", action="store_true", help="replace an existing --output")
    parser.add_argument("--skip-missing", action="store_true",
                        help="score the trials whose utterances have embeddings instead of refusing the list")
    parser.add_argument("--data-root", default="data", help="where registered trial-set names are found "
                                                            "(default data)")
    return parser


def score_trials_main(argv: list[str] | None = None) -> int:
    """sslsv score-trials EMBEDDINGS --trials LIST [-o scores.txt]."""
    args = build_score_trials_parser().parse_args(argv)

    def run() -> None:
        from sslsv.evaluation.embedding_io import (EmbeddingFileError, load_embeddings, score_pairs,
                                                   write_pair_scores)
        from sslsv.evaluation.scoring import write_scores

        output = Path(args.output) if args.output else None
        if output is not None:
            _check_output(output, args.force, "--output")
        trials = _trial_list(args.trials, args.data_root)
        if trials.labels is None and output is None:
            raise EmbeddingFileError(f"{trials.path} has no labels, so there are no metrics to print: give -o FILE "
                                    f"to write the scores")
        stored = load_embeddings(args.embeddings, args.keys)
        scores, kept, missing = score_pairs(stored, trials.enroll, trials.test, skip_missing=args.skip_missing)
        if missing:
            print(f"warning: {len(missing)} trial utterance(s) have no embedding in {stored.path}, "
                  f"{len(trials) - len(kept)} of {len(trials)} trials skipped, e.g. {', '.join(missing[:3])}",
                  file=sys.stderr)
        enroll = [trials.enroll[i] for i in kept]
        test = [trials.test[i] for i in kept]
        labels = None if trials.labels is None else trials.labels[kept]
        message = (f"{trials.path}: {len(kept)} trials scored from {stored.path} "
                   f"({len(stored.keys)} embeddings of dimension {stored.matrix.shape[1]})")
        if labels is not None:
            message += "\n" + _metrics_line(scores, labels)
        if output is not None:
            if labels is None:
                write_pair_scores(output, enroll, test, scores)
            else:
                write_scores(output, enroll, test, scores, labels)
            message += f"\nscores -> {output}"
        print(message)

    return run_command(run)


# ------------------------------------------------------------------------------------------------ metrics


def build_metrics_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslsv metrics",
        description="EER, minDCF, actDCF, Cllr, minCllr and a DET plot of an existing score file. Layouts, "
                    "detected from the columns: 'enroll test score label' (sslsv, wespeaker), 'label enroll test "
                    "score', 'enroll test score' (labels from --trials), 'score label' (Kaldi compute-eer), "
                    "'label score'; labels 1/0 or target/nontarget.",
        epilog="Example: sslsv metrics models/simclr/fast_resnet34_demo/scores/demo.score -o demo_det.png")
    parser.add_argument("scores", help="score file")
    parser.add_argument("--trials", help="labelled trial list giving the labels of an 'enroll test score' file "
                                         "(or a registered trial-set name under --data-root)")
    parser.add_argument("--p-target", type=float, nargs="+", default=list(DEFAULT_P_TARGETS), metavar="P",
                        help="target priors of minDCF and actDCF (default 0.01 0.05; costs 1)")
    parser.add_argument("-o", "--output", help="DET plot PNG (default: <score file without suffix>_det.png)")
    parser.add_argument("--no-plot", action="store_true", help="print the metrics only")
    parser.add_argument("--force", action="store_true", help="replace an existing DET plot")
    parser.add_argument("--name", help="system name in the DET legend (default: the score file's name)")
    parser.add_argument("--data-root", default="data", help="where registered trial-set names are found "
                                                            "(default data)")
    return parser


def metrics_main(argv: list[str] | None = None) -> int:
    """sslsv metrics SCOREFILE [--p-target P ...] [-o det.png]."""
    parser = build_metrics_parser()
    args = parser.parse_args(argv)
    bad = [p for p in args.p_target if not 0.0 < p < 1.0]
    if bad:
        parser.error(f"--p-target: priors must be in (0, 1), got {bad[0]}")

    def run() -> None:
        from sslsv.evaluation.embedding_io import EmbeddingFileError, label_from_trials, read_score_file
        from sslsv.evaluation.metrics import (compute_act_dcf, compute_cllr, compute_eer, compute_min_cllr,
                                              compute_min_dcf)
        from sslsv.evaluation.plots import plot_det

        score_path = Path(args.scores)
        det = None if args.no_plot else Path(args.output or score_path.with_name(score_path.stem + "_det.png"))
        if det is not None:
            _check_output(det, args.force, "DET plot")
        table = read_score_file(score_path)
        if table.labels is None:
            if not args.trials:
                raise EmbeddingFileError(f"{score_path}: '{table.layout}' lines have no labels; give the labelled "
                                         f"trial list with --trials LIST")
            table = label_from_trials(table, _trial_list(args.trials, args.data_root))
        scores, labels = table.scores, table.labels
        eer, eer_threshold = compute_eer(scores, labels)
        rows = [("EER (%)", f"{100 * eer:.3f}", f"threshold {eer_threshold:.6g}")]
        for p in args.p_target:
            value, threshold = compute_min_dcf(scores, labels, p)
            rows.append((f"minDCF{p:g}", f"{value:.4f}", f"threshold {threshold:.6g}"))
        for p in args.p_target:
            rows.append((f"actDCF{p:g}", f"{compute_act_dcf(scores, labels, p):.4f}", "scores read as LLRs"))
        rows.append(("Cllr", f"{compute_cllr(scores, labels):.4f}", "bits, scores read as LLRs"))
        rows.append(("minCllr", f"{compute_min_cllr(scores, labels):.4f}", "bits, after the best monotonic "
                                                                           "calibration"))
        lines = [f"{score_path}: {len(scores)} trials ({int(labels.sum())} target), layout '{table.layout}'"]
        lines += [f"  {name:<12} {value:>9}   {note}" for name, value, note in rows]
        if scores.min() >= -1.0 and scores.max() <= 1.0:
            lines.append("  (scores within [-1, 1] look like cosines, not log-likelihood ratios: actDCF and Cllr "
                         "measure miscalibration; calibrate with sslsv fuse)")
        if det is not None:
            plot_det({args.name or score_path.stem: (scores, labels)}, det, title=score_path.name)
            lines.append(f"DET -> {det}")
        print("\n".join(lines))

    return run_command(run)
