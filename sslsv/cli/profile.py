"""`sslsv profile`: parameters and MACs per second of audio of a config's encoder."""
from __future__ import annotations

import argparse

from sslsv.cli.errors import run_command


def main(argv: list[str] | None = None) -> int:
    """sslsv profile CONFIG [key=value ...] [--seconds S]."""
    parser = argparse.ArgumentParser(
        prog="sslsv profile", description="Parameters and MACs per second of audio of a config's encoder.")
    parser.add_argument("config", help="YAML config, e.g. configs/simclr/fast_resnet34.yml")
    parser.add_argument("overrides", nargs="*", help="key.subkey=value")
    parser.add_argument("--seconds", type=float, default=2.0, help="input length used for counting (default 2)")
    args = parser.parse_intermixed_args(argv)

    def run() -> None:
        from sslsv.config import load_config
        from sslsv.encoders.base import build_encoder
        from sslsv.encoders.profile import profile_encoder

        config = load_config(args.config, args.overrides)
        encoder = build_encoder(config.encoder, config.features)
        figures = profile_encoder(encoder, seconds=args.seconds, sample_rate=config.features.sample_rate,
                                  n_mels=config.features.n_mels)
        sample_seconds = sum(g.count * g.seconds for g in config.dataset.views)
        print(f"encoder        {config.encoder.name} ({config.features.n_mels} mels)")
        print(f"parameters     {figures['params']:,} (trainable {figures['trainable']:,})")
        print(f"GMACs / s      {figures['macs_per_second'] / 1e9:.3f}  (conv + linear layers, measured on "
              f"{args.seconds:g} s)")
        print(f"GMACs / sample {figures['macs_per_second'] * sample_seconds / 1e9:.3f}  (forward, all views: "
              f"{sample_seconds:g} s of audio; FLOPs ~ 2 x MACs)")

    return run_command(run)
