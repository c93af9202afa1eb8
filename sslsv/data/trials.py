"""Verification trial lists: reading (VoxCeleb or Kaldi format), writing, and the named trial sets.

VoxCeleb format: "1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav" (label first, 1 = same speaker).
Kaldi format: "enroll test target|nontarget" (label last). The format is detected from the content; lists of
580k lines (VoxCeleb1-E) parse in well under a second with pandas' C parser, and every line is validated.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sslsv.registry import TRIAL_SETS


class TrialsError(ValueError):
    """An unusable trial list or trial-set name; the message names the file and line."""


@dataclass
class Trials:
    """Trials i compares enroll[i] with test[i]; labels[i] is 1 for same speaker, 0 otherwise (int8)."""

    enroll: list[str]
    test: list[str]
    labels: np.ndarray
    path: str

    def __len__(self) -> int:
        return len(self.labels)

    def utterances(self) -> list[str]:
        """Every utterance of the list, once, sorted: what needs an embedding."""
        return sorted(set(self.enroll) | set(self.test))


@dataclass(frozen=True)
class TrialSet:
    """A named trial list: `path` and `audio_dir` relative to the data root; utterances are under audio_dir."""

    path: str
    audio_dir: str
    description: str

    def __post_init__(self) -> None:
        # The registry lister prints the first docstring line of registered objects: make it this set's.
        object.__setattr__(self, "__doc__", self.description)


def _register(name: str, trial_set: TrialSet) -> None:
    if name not in TRIAL_SETS:  # tolerate re-imports (e.g. importlib.reload in tests)
        TRIAL_SETS.register(name)(trial_set)


_register("vox1_O", TrialSet("voxceleb1/veri_test2.txt", "voxceleb1/wav",
                             "VoxCeleb1-O (cleaned): 37,611 trials, 40 test speakers"))
_register("vox1_E", TrialSet("voxceleb1/list_test_all2.txt", "voxceleb1/wav",
                             "VoxCeleb1-E (cleaned): 579,818 trials over all of VoxCeleb1"))
_register("vox1_H", TrialSet("voxceleb1/list_test_hard2.txt", "voxceleb1/wav",
                             "VoxCeleb1-H (cleaned): 550,894 trials, same nationality and gender"))
_register("demo", TrialSet("demo/trials.txt", "demo/wav", "demo corpus test trials"))
_register("demo_val", TrialSet("demo/val_trials.txt", "demo/wav", "demo corpus validation trials"))


# ------------------------------------------------------------------------------------------------ reading

_VOX_LABELS = {"1": 1, "0": 0}
_KALDI_LABELS = {"target": 1, "nontarget": 0}


def _line_format(fields: list[str]) -> str | None:
    """'voxceleb', 'kaldi' or None (malformed) for one line's fields."""
    if len(fields) != 3:
        return None
    if fields[0] in _VOX_LABELS:
        return "voxceleb"
    if fields[2] in _KALDI_LABELS:
        return "kaldi"
    return None


def _diagnose(path: str) -> None:
    """Slow path, only when the fast parse found a problem: raise TrialsError for the first bad line."""
    expected, first_line = None, 0
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.split()
            if not fields:
                continue
            kind = _line_format(fields)
            if kind is None:
                raise TrialsError(
                    f"{path}: line {number}: malformed trial {line.strip()!r}; expected '1|0 enroll test' "
                    f"(VoxCeleb) or 'enroll test target|nontarget' (Kaldi)"
                )
            if expected is None:
                expected, first_line = kind, number
            elif kind != expected:
                raise TrialsError(
                    f"{path}: line {number}: mixed formats: {line.strip()!r} is {kind} format but line "
                    f"{first_line} is {expected} format"
                )
    raise TrialsError(f"{path}: could not parse the trial list")  # the fast parser disagreed; should not happen


def read_trials(path: str | Path) -> Trials:
    """Read a trial list, detecting its format (VoxCeleb: label first; Kaldi: target/nontarget last).

    Args:
        path: trial file.

    Returns:
        The trials, in file order.

    Raises:
        TrialsError: missing or empty file, malformed line (file, line number and content), mixed formats.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise TrialsError(f"trial list not found: {path}")
    try:
        table = pd.read_csv(path, sep=r"\s+", header=None, dtype=str, keep_default_na=False, na_filter=False,
                            engine="c", quoting=3, skip_blank_lines=True)
    except pd.errors.EmptyDataError:
        raise TrialsError(f"{path}: empty trial list") from None
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError):
        _diagnose(path)
        raise  # unreachable: _diagnose raises
    if len(table) == 0:
        raise TrialsError(f"{path}: empty trial list")
    if table.shape[1] != 3:
        _diagnose(path)
    first, middle, last = (table[c].to_numpy(dtype=object) for c in (0, 1, 2))
    complete = (middle != "") & (last != "")
    vox = complete & np.isin(first, list(_VOX_LABELS))
    kaldi = complete & ~vox & np.isin(last, list(_KALDI_LABELS))
    if vox.all():
        return Trials(list(middle), list(last), (first == "1").astype(np.int8), path)
    if kaldi.all():
        return Trials(list(first), list(middle), (last == "target").astype(np.int8), path)
    _diagnose(path)
    raise AssertionError("unreachable")


def write_trials(trials: Trials, path: str | Path) -> None:
    """Write VoxCeleb format: "label enroll test" per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(f"{int(l)} {e} {t}\n" for l, e, t in zip(trials.labels, trials.enroll, trials.test))


# ------------------------------------------------------------------------------------------------ resolving


def resolve_trials(name_or_path: str, data_root: str | Path) -> tuple[Trials, Path]:
    """Trials and the folder their utterance paths are relative to, from a trial-set name or a file.

    A registered name uses its TrialSet. Otherwise `name_or_path` is a trial file, absolute or relative to the
    data root; its utterances are looked up in the file's folder + "/wav" when that exists, else the folder.

    Raises:
        TrialsError: unknown name that is not a file (registered names listed, closest suggested), missing file.
    """
    root = Path(data_root)
    if name_or_path in TRIAL_SETS:
        trial_set: TrialSet = TRIAL_SETS.get(name_or_path).obj
        path = root / trial_set.path
        if not path.is_file():
            raise TrialsError(f"trial set '{name_or_path}' ({trial_set.description}): {path} not found "
                              f"(dataset.data_root={data_root})")
        return read_trials(path), root / trial_set.audio_dir
    candidate = Path(name_or_path)
    path = candidate if candidate.is_absolute() else root / candidate
    if not path.is_file():
        names = TRIAL_SETS.names()
        match = difflib.get_close_matches(name_or_path, names, n=1, cutoff=0.0)
        hint = f" Did you mean '{match[0]}'?" if match else ""
        raise TrialsError(f"unknown trial set '{name_or_path}': not a registered name and {path} is not a file."
                          f"{hint} Registered trial sets: {', '.join(names)}")
    folder = path.parent
    audio_dir = folder / "wav" if (folder / "wav").is_dir() else folder
    return read_trials(path), audio_dir
