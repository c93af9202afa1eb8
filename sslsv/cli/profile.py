"""`sslsv profile`: parameters, inference MACs per second of audio, and training MACs per sample (all passes).

The review: T. Lepage, R. Dehak, "Self-Supervised Learning for Speaker Recognition: A study and review",
2026, arXiv:2602.10829 (docs/references.md)."""
from __future__ import annotations

import argparse

from sslsv.cli.errors import run_command


def main(argv: list[str] | None = None) -> int:
    """sslsv profile CONFIG [key=value ...] [--seconds S]."""
    parser = argparse.ArgumentParser(
        prog="sslsv profile", description="Parameters, inference MACs per second of audio and training MACs per sample "
                    "(every forward pass of the method: student, teacher / key encoder, heads).")
    parser.add_argument("config", help="YAML config, e.g. configs/simclr/fast_resnet34.yml")
    parser.add_argument("overrides", nargs="*", help="key.subkey=value")
    parser.add_argument("--seconds", type=float, default=2.0, help="input length used for counting (default 2)")
    args = parser.parse_intermixed_args(argv)

    def run() -> None:
        from sslsv.config import load_config
        from sslsv.encoders.base import build_encoder
        from sslsv.encoders.profile import profile_encoder
        from sslsv.training.cost import training_macs_per_sample

        config = load_config(args.config, args.overrides)
        encoder = build_encoder(config.encoder, config.features)
        # waveform encoders with their own front-end (SSRFNet) say how many mels they compute
        n_mels = getattr(config.encoder.options, "n_mels", None) if encoder.input_kind == "waveform" else None
        n_mels = n_mels or config.features.n_mels
        figures = profile_encoder(encoder, seconds=args.seconds, sample_rate=config.features.sample_rate,
                                  n_mels=config.features.n_mels)
        training = training_macs_per_sample(config)
        views = " + ".join(f"{g.count}x{g.seconds:g} s" for g in config.dataset.views)
        inference = figures["macs_per_second"] / 1e9
        print(f"encoder        {config.encoder.name} ({n_mels} mels)")
        print(f"parameters     {figures['params']:,} (trainable {figures['trainable']:,})")
        print(f"inference      {inference:.3f} GMACs = {2 * inference:.3f} GFLOPs per second of audio "
              f"(embedding model, measured on {args.seconds:g} s)")
        print(f"training       {training['macs_per_sample'] / 1e9:.3f} GMACs = "
              f"{2 * training['macs_per_sample'] / 1e9:.2f} GFLOPs per sample (method {config.method.name}, "
              f"views {views}: every forward pass: student, teacher / key encoder, heads)")
        print(f"  student only {training['student_macs_per_sample'] / 1e9:.3f} GMACs = "
              f"{2 * training['student_macs_per_sample'] / 1e9:.2f} GFLOPs (the embedding model on every view)")
        print("counts: conv + linear layers, 1 MAC = 2 FLOPs (the review's Table 12 convention); backward not counted")

    return run_command(run)
