"""Verification trial lists: reading (VoxCeleb or Kaldi format), writing, and the named trial sets.

VoxCeleb format: "1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav" (label first, 1 = same speaker).
Kaldi format: "enroll test target|nontarget" (label last). Fields are separated by any whitespace, or, in a list
that does not split into 3 fields that way, by tabs only (then paths may contain spaces). The format is detected
from the content; lists of 580k lines (VoxCeleb1-E) parse in well under a second with pandas' C parser, and every
line is validated.
"""
from __future__ import annotations

import difflib
import os
from concurrent.futures import ThreadPoolExecutor
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


def _text_lines(path: str):
    """The file's lines as text; TrialsError naming the line that is not UTF-8 (a binary file, say)."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                raise TrialsError(f"{path}: line {number}: not UTF-8 text; is this a trial list?") from None


def _has_tab(path: str) -> bool:
    with open(path, "rb") as handle:
        return b"\t" in handle.read(65536)


def _split(line: str) -> list[str]:
    """Fields split on any whitespace; a line that does not give 3 fields that way but holds tabs is split on tabs
    only, so that tab-separated lists may hold paths with spaces."""
    fields = line.split()
    if len(fields) != 3 and "\t" in line:
        fields = [f.strip() for f in line.strip().split("\t")]
    return fields


def _parse(path: str, separator: str) -> pd.DataFrame | None:
    """The list as a table of strings; None when the C parser cannot split it this way."""
    try:
        return pd.read_csv(path, sep=separator, header=None, dtype=str, keep_default_na=False, na_filter=False,
                           engine="c", quoting=3, skip_blank_lines=True)
    except pd.errors.EmptyDataError:
        raise
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError):
        return None


def _diagnose(path: str) -> None:
    """Slow path, only when the fast parse found a problem: raise TrialsError for the first bad line."""
    expected, first_line = None, 0
    for number, line in enumerate(_text_lines(path), 1):
        fields = _split(line)
        if not any(fields):
            continue
        kind = _line_format(fields)
        if kind is None:
            spaces = "; a path with spaces needs tab-separated fields" if len(fields) > 3 else ""
            raise TrialsError(
                f"{path}: line {number}: malformed trial {line.strip()!r}; expected '1|0 enroll test' "
                f"(VoxCeleb) or 'enroll test target|nontarget' (Kaldi){spaces}"
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
    if os.path.isdir(path):
        raise TrialsError(f"trial list {path} is a directory, not a file")
    if not os.path.isfile(path):
        raise TrialsError(f"trial list not found: {path}")
    try:
        table = _parse(path, r"\s+")
        if (table is None or table.shape[1] != 3) and _has_tab(path):
            table = _parse(path, "\t")  # tab-separated fields: paths may contain spaces
    except pd.errors.EmptyDataError:
        raise TrialsError(f"{path}: empty trial list") from None
    if table is None:
        _diagnose(path)
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
    """Write VoxCeleb format: "label enroll test" per line (tab-separated when a path contains whitespace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sep = "\t" if any(any(c.isspace() for c in u) for u in trials.utterances()) else " "
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(f"{int(l)}{sep}{e}{sep}{t}\n" for l, e, t in zip(trials.labels, trials.enroll, trials.test))


# ------------------------------------------------------------------------------------------------ resolving

# Where the utterances of a trial list are looked up (docs/evaluation.md, "Where trial audio is read from"):
#   1. an explicit audio root (`sslsv evaluate --audio-root DIR`, the `audio_root` / `audio_dir` arguments), else
#   2. a registered trial set's own folder (TrialSet.audio_dir under the data root), else
#   3. the data root itself, for a trial file.
# An absolute utterance path is used as it is. There is deliberately no guessing (an older rule silently read
# "<trial file's folder>/wav/" when that folder existed, which broke most users' own lists).


def resolve_trials(name_or_path: str, data_root: str | Path,
                   audio_root: str | Path | None = None) -> tuple[Trials, Path]:
    """Trials and the folder their utterance paths are relative to, from a trial-set name or a file.

    Args:
        name_or_path: a registered trial-set name (vox1_O, demo ...) or a trial file, absolute or relative to the
            data root.
        data_root: the data root (dataset.data_root).
        audio_root: folder the utterance paths are relative to, overriding the default: the registered set's
            audio folder for a name, the data root for a trial file.

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
        return read_trials(path), Path(audio_root) if audio_root is not None else root / trial_set.audio_dir
    candidate = Path(name_or_path)
    path = candidate if candidate.is_absolute() else root / candidate
    if not path.is_file():
        names = TRIAL_SETS.names()
        match = difflib.get_close_matches(name_or_path, names, n=1, cutoff=0.0)
        hint = f" Did you mean '{match[0]}'?" if match else ""
        raise TrialsError(f"unknown trial set '{name_or_path}': not a registered name and {path} is not a file."
                          f"{hint} Registered trial sets: {', '.join(names)}")
    return read_trials(path), Path(audio_root) if audio_root is not None else root


def check_trial_labels(trials: Trials) -> None:
    """Raise TrialsError unless the list has both target and non-target trials (what every metric needs)."""
    targets = int(np.count_nonzero(trials.labels))
    if targets == 0 or targets == len(trials):
        raise TrialsError(f"verification needs both target and non-target trials: {trials.path} has {targets} "
                          f"target, {len(trials) - targets} non-target")


_SHOWN_MISSING = 3  # missing files named in the error; the count gives the rest


def locate_trial_audio(trials: Trials, audio_dir: str | Path) -> list[str]:
    """The audio file of every utterance of the list, checked to exist before any of them is read.

    Args:
        trials: the list.
        audio_dir: folder the relative utterance paths are relative to (see resolve_trials).

    Returns:
        One path per `trials.utterances()` entry, in that order.

    Raises:
        TrialsError: some files are missing or are not regular files; the message gives their number, the first
            ones with their line in the trial file, the folder searched and how to point elsewhere.
    """
    folder = Path(audio_dir)
    utterances = trials.utterances()
    files = [str(folder / u) for u in utterances]  # an absolute utterance path stays as it is
    found = _are_files(files)
    if all(found):
        return files
    missing = {u for u, ok in zip(utterances, found) if not ok}
    first = _first_occurrences(trials, missing)
    shown = ", ".join(_describe_missing(name, line, folder) for name, line in first)
    more = f" (first {len(first)} shown)" if len(missing) > len(first) else ""
    raise TrialsError(f"{trials.path}: {len(missing)} of {len(utterances)} trial utterance(s) not found under "
                      f"{folder}: {shown}{more}. Relative utterance paths are read from the data root "
                      f"(dataset.data_root) for a trial file, from the set's folder for a registered trial set, or "
                      f"from the folder given with --audio-root DIR; absolute paths are used as they are"
                      f"{_elsewhere_hint(trials, first[0][0], folder)}")


def _are_files(paths: list[str]) -> list[bool]:
    """os.path.isfile of each path; threads overlap the stat calls of long lists on network file systems."""
    chunks = [paths[i:i + 1000] for i in range(0, len(paths), 1000)]
    with ThreadPoolExecutor(max_workers=min(16, len(chunks) or 1)) as pool:
        return [ok for chunk in pool.map(lambda c: [os.path.isfile(p) for p in c], chunks) for ok in chunk]


def _first_occurrences(trials: Trials, missing: set[str]) -> list[tuple[str, int | None]]:
    """The first missing utterances in file order, with their line number when the list came from a file."""
    if os.path.isfile(trials.path):  # only on failure: one more pass over the file, for the line numbers
        names = ((name, number) for number, line in enumerate(_text_lines(trials.path), 1) for name in line.split())
    else:
        names = ((name, None) for pair in zip(trials.enroll, trials.test) for name in pair)
    shown: dict[str, int | None] = {}
    for name, line in names:
        if name in missing and name not in shown:
            shown[name] = line
            if len(shown) == _SHOWN_MISSING:
                break
    return list(shown.items())


def _describe_missing(name: str, line: int | None, folder: Path) -> str:
    where = f"line {line}: " if line is not None else ""
    kind = " (a directory, not a file)" if (folder / name).is_dir() else ""
    return f"{where}{name}{kind}"


def _elsewhere_hint(trials: Trials, missing: str, folder: Path) -> str:
    """'; found under X: pass --audio-root X' when a missing utterance exists next to the trial file (or in its
    wav/ folder, the layout of the demo and VoxCeleb sets), the usual reason a user's list is not found."""
    if not os.path.isfile(trials.path) or Path(missing).is_absolute():
        return ""
    base = Path(trials.path).parent
    for candidate in (base, base / "wav"):
        if candidate != folder and (candidate / missing).is_file():
            return f"; {missing} is under {candidate}: pass --audio-root {candidate}"
    return ""
