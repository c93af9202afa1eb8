"""sslsv: self-supervised speaker verification.

`sslsv.load(run_dir)` returns a SpeakerEmbedder (see sslsv.inference). It is imported lazily so that
`import sslsv.config` and the CLI's `--help` do not pay for torch and the evaluation stack.
"""
from __future__ import annotations

__all__ = ["load"]


def __getattr__(name: str):
    if name == "load":
        from sslsv.inference import load

        return load
    raise AttributeError(f"module 'sslsv' has no attribute {name!r}")
