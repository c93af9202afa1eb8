"""A deterministic, seedable synthetic speaker corpus in VoxCeleb layout, made with the espeak-ng engine.

Speakers are espeak-ng voices (base language/accent + voice variant + pitch, pitch range and speaking rate)
followed by a voice-quality transform done in signal processing: a vocal-tract length warp (the 22050 Hz
synthesis is resampled as if it had been recorded at 22050 * alpha Hz, which scales every formant by alpha),
a spectral tilt, roughness (jitter as a small random time-warp, shimmer as a random amplitude modulation) and
breathiness (high-passed noise following the voiced-speech envelope). Each session (recording) has its own
channel: reverberation (synthetic exponentially decaying noise RIR), coloured background noise at a random SNR,
EQ (random low-cut, high-cut and peaking filters) and gain; every utterance of a session shares it.

Everything is drawn from numpy generators seeded by (seed, kind, indices), so the same seed gives byte-identical
files regardless of the number of workers. espeak-ng is not thread safe: parallel builds use processes, each with
its own engine.

Modules: espeak (the engine binding), config (DemoCorpusConfig, seeding), voices (speaker and channel parameters,
sentences), signal (the DSP), recordings (the work units: sessions and the augmentation set), corpus (the build,
manifests, trial lists, completeness). The command line is `sslsv demo-corpus` (sslsv.cli.demo_corpus).
"""
from sslsv.data.demo.config import DemoCorpusConfig
from sslsv.data.demo.corpus import build_demo_corpus

__all__ = ["DemoCorpusConfig", "build_demo_corpus"]
