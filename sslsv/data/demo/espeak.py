"""The espeak-ng speech engine, called through ctypes (one engine per process).

The shared library and its voice data come from the PyPI package `espeakng-loader`. The engine runs in
synchronous (retrieval) mode: a callback collects the samples of one synthesis call.
"""
from __future__ import annotations

import ctypes

import numpy as np

ESPEAK_RATE = 22050  # the engine's fixed output sample rate

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class EspeakError(RuntimeError):
    """espeak-ng is missing, lacks a voice, or failed to synthesise."""


def _declare_signatures(lib: ctypes.CDLL) -> None:
    """Argument and return types of the functions used (ctypes would guess int for everything)."""
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
        ctypes.c_void_p, ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int


class EspeakEngine:
    """The espeak-ng shared library of the `espeakng-loader` package, in synchronous (retrieval) mode."""

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as error:  # pragma: no cover
            raise EspeakError(
                "the demo corpus needs the PyPI package espeakng-loader (pip install espeakng-loader)"
            ) from error
        self.lib = lib = ctypes.CDLL(espeakng_loader.get_library_path())
        _declare_signatures(lib)
        # espeak-ng >= 1.52: seeds the generator behind breathy voicing (otherwise seeded from the clock).
        self._set_seed = getattr(lib, "espeak_ng_SetRandSeed", None)
        if self._set_seed is not None:
            self._set_seed.argtypes = [ctypes.c_long]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if rate != ESPEAK_RATE:
            raise EspeakError(f"espeak_Initialize returned {rate} (expected the sample rate {ESPEAK_RATE})")
        self._chunks: list[np.ndarray] = []

        def collect(wav, count, events):
            if count > 0 and wav:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
            return 0

        self._callback = _CALLBACK(collect)  # keep a reference: the library holds only the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def synth(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int, seed: int = 1) -> np.ndarray:
        """float32 samples at ESPEAK_RATE in [-1, 1]."""
        if self._set_seed is not None:
            self._set_seed(int(seed))
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise EspeakError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
        self.lib.espeak_SetParameter(_PARAM_VOLUME, 100, 0)
        self.lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
        self.lib.espeak_SetParameter(_PARAM_RANGE, int(pitch_range), 0)
        data = text.encode("utf-8")
        self._chunks = []
        status = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != 0:
            raise EspeakError(f"espeak_Synth failed with status {status}")
        if not self._chunks:
            return np.zeros(0, np.float32)
        return np.concatenate(self._chunks).astype(np.float32) / 32768.0


_ENGINE: EspeakEngine | None = None


def engine() -> EspeakEngine:
    """This process's engine, created on first use."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = EspeakEngine()
    return _ENGINE


def engine_loaded() -> bool:
    """Whether this process has created its engine (a forked child would inherit its state)."""
    return _ENGINE is not None
