"""Commands around a trained run: `sslsv embed`, `sslsv score`, `sslsv export`, `sslsv average`."""
from __future__ import annotations

import argparse
from pathlib import Path

from sslsv.cli.errors import run_command

DEVICE_HELP = "auto, cpu, cuda or cuda:N (default auto)"
LAST_HELP = "use the last epoch's weights instead of the average"


def embed_main(argv: list[str] | None = None) -> int:
    """sslsv embed RUN a.wav b.wav -o emb.npy: embed audio files with a trained run."""
    parser = argparse.ArgumentParser(prog="sslsv embed", description="Embed audio files with a trained run.")
    parser.add_argument("run", help="run directory")
    parser.add_argument("files", nargs="*", help="audio files")
    parser.add_argument("--list", help="text file with one audio path per line (added after FILES)")
    parser.add_argument("-o", "--output", required=True, help="output .npy, (N, D) float32 in input order")
    parser.add_argument("--last", action="store_true", help=LAST_HELP)
    parser.add_argument("--no-normalize", action="store_true", help="keep raw (not L2-normalised) embeddings")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    args = parser.parse_args(argv)
    files = list(args.files)
    if args.list:
        try:
            files += [line.strip() for line in Path(args.list).read_text().splitlines() if line.strip()]
        except OSError as error:
            parser.error(f"--list: {error}")
    if not files:
        parser.error("no audio files given (FILES or --list)")

    def run() -> None:
        import numpy as np

        import sslsv
        from sslsv.audio.io import check_audio_files

        check_audio_files(files)  # every unusable file named before the model is loaded
        embedder = sslsv.load(args.run, args.device, use_average=not args.last)
        embeddings = embedder.embed(files, normalize=not args.no_normalize, progress=True)
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        np.save(output, embeddings)
        output.with_suffix(".txt").write_text("\n".join(files) + "\n")
        print(f"{output}: {embeddings.shape[0]} x {embeddings.shape[1]} embeddings ({embedder.source}); "
              f"row order in {output.with_suffix('.txt')}")

    return run_command(run)


def score_main(argv: list[str] | None = None) -> int:
    """sslsv score RUN a.wav b.wav: cosine score of two audio files with a trained run."""
    parser = argparse.ArgumentParser(prog="sslsv score",
                                     description="Cosine score of two audio files with a trained run.")
    parser.add_argument("run", help="run directory")
    parser.add_argument("enroll", help="enrolment audio file")
    parser.add_argument("test", help="test audio file")
    parser.add_argument("--last", action="store_true", help=LAST_HELP)
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    args = parser.parse_args(argv)

    def run() -> None:
        import sslsv
        from sslsv.audio.io import check_audio_files

        check_audio_files([args.enroll, args.test])
        embedder = sslsv.load(args.run, args.device, use_average=not args.last)
        print(f"{embedder.score(args.enroll, args.test):.6f}")

    return run_command(run)


def export_main(argv: list[str] | None = None) -> int:
    """sslsv export RUN -o model.onnx: export a run's embedding model to ONNX, checked with onnxruntime."""
    parser = argparse.ArgumentParser(
        prog="sslsv export",
        description="Export a run's embedding model to ONNX (dynamic batch and time), checked with onnxruntime.")
    parser.add_argument("run", help="run directory")
    parser.add_argument("-o", "--output", required=True, help="output .onnx file")
    parser.add_argument("--last", action="store_true", help=LAST_HELP)
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    args = parser.parse_args(argv)

    def run() -> None:
        from sslsv.export import export_onnx, verify_onnx
        from sslsv.runs import load_model

        model, config, source = load_model(args.run, not args.last, "cpu")
        path = export_onnx(model, args.output, config.features.sample_rate, args.opset, check=False)
        message = f"{path}: exported from {source}"
        if not args.no_check:
            message += f"; onnxruntime max |diff| {verify_onnx(model, path, config.features.sample_rate):.1e}"
        print(message)

    return run_command(run)


def average_main(argv: list[str] | None = None) -> int:
    """sslsv average RUN --last 10 -o avg.pt: average the last N epochs' weights of a run."""
    parser = argparse.ArgumentParser(prog="sslsv average",
                                     description="Average the weights of a run's last N epochs.")
    parser.add_argument("run", help="run directory")
    parser.add_argument("--last", type=int, default=10, help="number of most recent epoch weights (default 10)")
    parser.add_argument("-o", "--output", help="output weight file (default RUN/model_avg.pt)")
    args = parser.parse_args(argv)

    def run() -> None:
        from sslsv.export import average_checkpoints, last_epoch_weights
        from sslsv.runs import RunLayout

        paths = last_epoch_weights(args.run, args.last)
        out = average_checkpoints(paths, args.output or RunLayout(args.run).model_average)
        print(f"{out}: mean of {', '.join(p.name for p in paths)}")

    return run_command(run)
