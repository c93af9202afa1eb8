"""Stored embeddings and score files: npy / npz / Kaldi ark+scp embeddings, label-free trial lists, score files in
the layouts of sslsv, Kaldi and VoxCeleb tools.

Embedding files (`save_embeddings` / `load_embeddings`, what `sslsv embed` writes and `sslsv score-trials` reads):

    emb.npy + emb.txt   (N, D) float32 matrix; the keys file beside it, one key per line, row order
    emb.npz             arrays "embeddings" (N, D) and "keys" (N,) strings (another single 2-D array is taken as
                        the embeddings)
    emb.ark + emb.scp   Kaldi archive of one float vector per key (written with kaldiio; read from either file)

Keys are utterance names: the audio paths as given to `sslsv embed`, the utterance ids of a wav.scp, or the
utterance names of a trial list. Kaldi keys cannot contain whitespace. A key stored twice: its first row is used.

Score files (`read_score_file`, what `sslsv metrics` reads), one trial per line, whitespace-separated (tabs only
when a line holds tabs, so that names may contain spaces); the layout is detected from the columns:

    enroll test score label     sslsv's own score files (`sslsv evaluate`, `fuse`, `score-trials`), wespeaker
    label enroll test score     a VoxCeleb trial line with its score appended
    enroll test score           Kaldi / wespeaker scores without labels: the labels come from a trial list
    score label                 Kaldi's compute-eer input
    label score

A label is 1 / 0 or target / nontarget. With two columns of 0 / 1 values the layout is ambiguous and refused.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from sslsv.data.trials import TrialsError, read_trials
from sslsv.evaluation.errors import EvaluationError
from sslsv.evaluation.scoring import cosine_scores

__all__ = ["EMBEDDING_FORMATS", "SCORE_LAYOUTS", "EmbeddingFileError", "ScoreTable", "StoredEmbeddings",
           "TrialPairs", "embedding_files", "label_from_trials", "load_embeddings", "read_score_file",
           "read_trial_pairs", "save_embeddings", "score_pairs", "write_pair_scores"]

EMBEDDING_FORMATS = ("npy", "npz", "kaldi")
_SUFFIX_FORMATS = {".npy": "npy", ".npz": "npz", ".ark": "kaldi", ".scp": "kaldi"}
SCORE_LAYOUTS = ("enroll test score label", "label enroll test score", "enroll test score", "score label",
                 "label score")
_LABELS = {"1": 1, "0": 0, "target": 1, "nontarget": 0}
_SHOWN = 3  # names shown in a "missing" message; the count gives the rest


class EmbeddingFileError(EvaluationError):
    """An unusable embedding, trial or score file, or embeddings missing for trials; the message names the file."""


def _kaldiio():
    try:
        import kaldiio
    except ImportError:
        raise EmbeddingFileError("Kaldi ark/scp embeddings need kaldiio: pip install kaldiio") from None
    return kaldiio


# ------------------------------------------------------------------------------------------------ embeddings


@dataclass
class StoredEmbeddings:
    """Embeddings read from a file: row i of `matrix` (N, D) float32 is the embedding of keys[i]."""

    keys: list[str]
    matrix: np.ndarray
    path: str

    def index(self) -> dict[str, int]:
        """key -> row (the first row of a key stored twice)."""
        rows: dict[str, int] = {}
        for row, key in enumerate(self.keys):
            rows.setdefault(key, row)
        return rows


def embedding_files(path: str | Path, format: str | None = None) -> tuple[str, list[Path]]:
    """The format ("npy", "npz" or "kaldi") of an output name and the files it stands for.

    `emb.npy` -> emb.npy and its keys file emb.txt; `emb.npz`; `emb.ark` or `emb.scp` -> emb.ark and emb.scp. With
    `format`, a name without a suffix gets the format's (`-o emb --format kaldi` -> emb.ark, emb.scp).

    Raises:
        EmbeddingFileError: an unknown format or suffix, or a suffix that contradicts `format`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    from_suffix = _SUFFIX_FORMATS.get(suffix)
    if format is not None and format not in EMBEDDING_FORMATS:
        raise EmbeddingFileError(f"unknown embedding format '{format}' (choose from {', '.join(EMBEDDING_FORMATS)})")
    if format is None and from_suffix is None:
        raise EmbeddingFileError(f"{path}: unknown embedding file type '{suffix or '(no suffix)'}'; use .npy, .npz, "
                                 f".ark or .scp (or give the format)")
    if format is not None and from_suffix is not None and from_suffix != format:
        raise EmbeddingFileError(f"{path}: a {suffix} name contradicts the format '{format}'")
    format = format or from_suffix
    if from_suffix is None:
        path = path.with_name(path.name + {"npy": ".npy", "npz": ".npz", "kaldi": ".ark"}[format])
    if format == "npy":
        return format, [path, path.with_suffix(".txt")]
    if format == "npz":
        return format, [path]
    return format, [path.with_suffix(".ark"), path.with_suffix(".scp")]


def save_embeddings(path: str | Path, keys: Sequence[str], embeddings: np.ndarray,
                    format: str | None = None) -> list[Path]:
    """Write (N, D) embeddings and their N keys in the format of `path` (see embedding_files); returns the files.

    Raises:
        EmbeddingFileError: unknown format, keys and rows differ in number, a Kaldi key with whitespace or given
            twice.
    """
    format, files = embedding_files(path, format)
    matrix = np.asarray(embeddings, dtype=np.float32)
    keys = [str(k) for k in keys]
    if matrix.ndim != 2 or len(keys) != len(matrix):
        raise EmbeddingFileError(f"{files[0]}: {len(keys)} keys for embeddings of shape {matrix.shape}")
    files[0].parent.mkdir(parents=True, exist_ok=True)
    if format == "npy":
        bad = next((k for k in keys if "\n" in k or "\r" in k), None)
        if bad is not None:
            raise EmbeddingFileError(f"{files[0]}: key {bad!r} holds a line break")
        np.save(files[0], matrix)
        files[1].write_text("".join(f"{k}\n" for k in keys), encoding="utf-8")
    elif format == "npz":
        np.savez(files[0], embeddings=matrix, keys=np.asarray(keys, dtype=str))
    else:
        bad = next((k for k in keys if not k or any(c.isspace() for c in k)), None)
        if bad is not None:
            raise EmbeddingFileError(f"{files[0]}: Kaldi keys cannot be empty or hold whitespace, got {bad!r} "
                                     f"(use utterance ids, e.g. from a wav.scp)")
        if len(set(keys)) != len(keys):
            twice = next(k for i, k in enumerate(keys) if k in keys[:i])
            raise EmbeddingFileError(f"{files[0]}: key '{twice}' given twice (a Kaldi archive needs unique keys)")
        _kaldiio().save_ark(str(files[0]), dict(zip(keys, matrix)), scp=str(files[1]))
    return files


def _read_keys(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise EmbeddingFileError(f"{path}: cannot read the keys file ({error.strerror or error})") from None
    return [line.rstrip("\r") for line in text.split("\n")[:-1]] if text.endswith("\n") else text.split("\n")


def _kaldi_vector(path: str, key: str, value) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.floating):
        raise EmbeddingFileError(f"{path}: '{key}' is a {array.dtype} array of shape {array.shape}, not an "
                                 f"embedding vector (frame-level features must be pooled first)")
    return array


def load_embeddings(path: str | Path, keys_file: str | Path | None = None) -> StoredEmbeddings:
    """Read embeddings written by save_embeddings (or by Kaldi, wespeaker, numpy: see the module docstring).

    Args:
        path: .npy, .npz, .ark or .scp file.
        keys_file: the keys of a .npy, one per line (default: the .txt file beside it).

    Raises:
        EmbeddingFileError: missing or unreadable file, unknown suffix, keys and rows differ in number, an entry
            that is not a vector, vectors of different sizes, non-finite values.
    """
    path = Path(path)
    if not path.is_file():
        raise EmbeddingFileError(f"embedding file not found: {path}")
    format = _SUFFIX_FORMATS.get(path.suffix.lower())
    if format is None:
        raise EmbeddingFileError(f"{path}: unknown embedding file type '{path.suffix}'; use .npy (with a keys "
                                 f"file), .npz, .ark or .scp")
    try:
        if format == "npy":
            matrix = np.load(path, allow_pickle=False)
            keys_path = Path(keys_file) if keys_file else path.with_suffix(".txt")
            if not keys_path.is_file():
                raise EmbeddingFileError(f"{path}: no keys file {keys_path} (one key per row, as `sslsv embed` "
                                         f"writes); give it with --keys FILE")
            keys = _read_keys(keys_path)
            if len(keys) != len(matrix):
                raise EmbeddingFileError(f"{path}: {len(matrix)} rows but {len(keys)} keys in {keys_path}")
        elif format == "npz":
            with np.load(path, allow_pickle=False) as data:
                names = list(data.files)
                if "keys" not in names:
                    raise EmbeddingFileError(f"{path}: no 'keys' array (arrays: {', '.join(names)})")
                keys = [str(k) for k in data["keys"].tolist()]
                others = [n for n in names if n != "keys"]
                name = "embeddings" if "embeddings" in names else (others[0] if len(others) == 1 else None)
                if name is None:
                    raise EmbeddingFileError(f"{path}: no 'embeddings' array (arrays: {', '.join(names)})")
                matrix = data[name]
            if len(keys) != len(matrix):
                raise EmbeddingFileError(f"{path}: {len(matrix)} embeddings but {len(keys)} keys")
        else:
            kaldiio = _kaldiio()
            if path.suffix.lower() == ".scp":
                table = kaldiio.load_scp(str(path))
                items = [(key, table[key]) for key in table]
            else:
                items = list(kaldiio.load_ark(str(path)))
            keys = [key for key, _ in items]
            vectors = [_kaldi_vector(str(path), key, value) for key, value in items]
            sizes = sorted({len(v) for v in vectors})
            if len(sizes) > 1:
                raise EmbeddingFileError(f"{path}: vectors of different sizes {sizes[:5]}")
            matrix = np.stack(vectors) if vectors else np.zeros((0, 0), np.float32)
    except EmbeddingFileError:
        raise
    except (OSError, ValueError, KeyError, EOFError) as error:  # numpy and kaldiio's errors on a corrupt file
        raise EmbeddingFileError(f"{path}: not a readable {format} embedding file ({error})") from None
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.number):
        raise EmbeddingFileError(f"{path}: embeddings must be an (N, D) numeric matrix, got {matrix.dtype} "
                                 f"of shape {matrix.shape}")
    matrix = matrix.astype(np.float32, copy=False)
    if not np.isfinite(matrix).all():
        bad = int((~np.isfinite(matrix).all(axis=1)).sum())
        raise EmbeddingFileError(f"{path}: {bad} of {len(matrix)} embeddings hold NaN or Inf values")
    return StoredEmbeddings(keys, matrix, str(path))


# ------------------------------------------------------------------------------------------------ trial scoring


@dataclass
class TrialPairs:
    """A trial list that may have no labels: pair i compares enroll[i] with test[i]; labels (T,) int8 or None."""

    enroll: list[str]
    test: list[str]
    labels: np.ndarray | None
    path: str

    def __len__(self) -> int:
        return len(self.enroll)


def read_trial_pairs(path: str | Path) -> TrialPairs:
    """A labelled trial list (VoxCeleb or Kaldi format, see sslsv.data.trials.read_trials) or a label-free one
    ("enroll test" lines, as in a Kaldi evaluation without keys).

    Raises:
        TrialsError: missing, empty or malformed list (the labelled reader's message when lines are not pairs).
    """
    path = str(path)
    try:
        trials = read_trials(path)
        return TrialPairs(trials.enroll, trials.test, trials.labels, path)
    except TrialsError as error:
        if not os.path.isfile(path):
            raise
        enroll, test = [], []
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split("\t") if "\t" in line else line.split()
                fields = [f.strip() for f in fields]
                if not any(fields):
                    continue
                if len(fields) != 2:
                    raise error from None
                enroll.append(fields[0])
                test.append(fields[1])
        if not enroll:
            raise
        return TrialPairs(enroll, test, None, path)


def _first_missing(names: Sequence[str], known: dict[str, int]) -> list[str]:
    return list(dict.fromkeys(n for n in names if n not in known))


def score_pairs(embeddings: StoredEmbeddings, enroll: Sequence[str], test: Sequence[str],
                skip_missing: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Cosine scores of the pairs whose two keys have an embedding.

    Args:
        embeddings: stored embeddings.
        enroll, test: (T,) keys of each pair.
        skip_missing: score the other pairs when some keys have no embedding, instead of refusing.

    Returns:
        (scores (K,) float32, kept (K,) indices of the scored pairs, missing keys in first-use order).

    Raises:
        EmbeddingFileError: some keys have no embedding and not skip_missing (one line: the count, the first
            few), or no pair could be scored.
    """
    rows = embeddings.index()
    missing = _first_missing(list(enroll) + list(test), rows)
    enroll_rows = np.fromiter((rows.get(k, -1) for k in enroll), np.int64, len(enroll))
    test_rows = np.fromiter((rows.get(k, -1) for k in test), np.int64, len(test))
    kept = np.flatnonzero((enroll_rows >= 0) & (test_rows >= 0))
    if missing and not skip_missing:
        raise EmbeddingFileError(f"{embeddings.path}: {len(missing)} trial utterance(s) have no embedding "
                                 f"({len(enroll) - len(kept)} of {len(enroll)} trials), e.g. "
                                 f"{', '.join(missing[:_SHOWN])}; keys look like '{embeddings.keys[0] if embeddings.keys else ''}'"
                                 f" (--skip-missing scores the other trials)")
    if len(kept) == 0:
        raise EmbeddingFileError(f"{embeddings.path}: none of the {len(enroll)} trials has both embeddings")
    scores = cosine_scores(embeddings.matrix, enroll_rows[kept], test_rows[kept])
    return scores, kept, missing


def write_pair_scores(path: str | Path, enroll: Sequence[str], test: Sequence[str], scores) -> None:
    """Label-free score file: "enroll test score" per line (tabs when a name holds spaces), 6 decimals."""
    sep = "\t" if any(any(c.isspace() for c in n) for n in (*enroll, *test)) else " "
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{e}{sep}{t}{sep}{s:.6f}\n" for e, t, s in zip(enroll, test, np.asarray(scores).tolist())),
                    encoding="utf-8")


# ------------------------------------------------------------------------------------------------ score files


@dataclass
class ScoreTable:
    """A score file: scores (T,) float64, labels (T,) int8 (None: the file has none), the pairs when it names them,
    and the layout detected (one of SCORE_LAYOUTS)."""

    scores: np.ndarray
    labels: np.ndarray | None
    enroll: list[str] | None
    test: list[str] | None
    layout: str
    path: str


def _floats(column: list[str]) -> np.ndarray | None:
    try:
        values = np.asarray(column, dtype=np.float64)
    except ValueError:
        return None
    return values


def _labels(column: list[str]) -> np.ndarray | None:
    values = np.asarray(column, dtype=object)
    known = np.isin(values, list(_LABELS))
    if not known.all():
        return None
    return np.asarray([_LABELS[v] for v in column], dtype=np.int8)


def _columns(path: str) -> list[list[str]]:
    rows: list[list[str]] = []
    width = None
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise EmbeddingFileError(f"{path}: line {number}: not UTF-8 text; is this a score file?") from None
            fields = [f.strip() for f in line.split("\t")] if "\t" in line else line.split()
            if not any(fields):
                continue
            if width is None:
                width = len(fields)
            if len(fields) != width or width not in (2, 3, 4):
                raise EmbeddingFileError(f"{path}: line {number}: {len(fields)} fields in {line.strip()!r}; a score "
                                         f"file has 2 to 4 columns, the same on every line "
                                         f"({'; '.join(SCORE_LAYOUTS)})")
            rows.append(fields)
    if not rows:
        raise EmbeddingFileError(f"{path}: empty score file")
    return [list(column) for column in zip(*rows)]


def read_score_file(path: str | Path) -> ScoreTable:
    """Read a score file in any of the layouts of the module docstring, detected from its columns.

    Raises:
        EmbeddingFileError: missing, empty or non-text file, lines of different widths, a layout that is not one of
            SCORE_LAYOUTS or is ambiguous (two columns of 0 / 1 values), NaN scores.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise EmbeddingFileError(f"score file not found: {path}")
    columns = _columns(path)
    found: list[ScoreTable] = []
    if len(columns) == 4:
        scores, labels = _floats(columns[2]), _labels(columns[3])
        if scores is not None and labels is not None:
            found.append(ScoreTable(scores, labels, columns[0], columns[1], SCORE_LAYOUTS[0], path))
        scores, labels = _floats(columns[3]), _labels(columns[0])
        if scores is not None and labels is not None:
            found.append(ScoreTable(scores, labels, columns[1], columns[2], SCORE_LAYOUTS[1], path))
    elif len(columns) == 3:
        scores = _floats(columns[2])
        if scores is not None:
            found.append(ScoreTable(scores, None, columns[0], columns[1], SCORE_LAYOUTS[2], path))
        elif _labels(columns[0]) is not None:
            raise EmbeddingFileError(f"{path}: this is a trial list (label enroll test), not a score file")
    else:
        for score_column, label_column, layout in ((0, 1, SCORE_LAYOUTS[3]), (1, 0, SCORE_LAYOUTS[4])):
            scores, labels = _floats(columns[score_column]), _labels(columns[label_column])
            if scores is not None and labels is not None:
                found.append(ScoreTable(scores, labels, None, None, layout, path))
    if not found:
        raise EmbeddingFileError(f"{path}: {len(columns)} columns in no known layout; expected one of: "
                                 f"{'; '.join(SCORE_LAYOUTS)} (label: 1/0 or target/nontarget)")
    if len(found) > 1:
        raise EmbeddingFileError(f"{path}: ambiguous layout, the file reads as '{found[0].layout}' and as "
                                 f"'{found[1].layout}'; write the labels as target/nontarget")
    table = found[0]
    nan = int(np.isnan(table.scores).sum())
    if nan:
        raise EmbeddingFileError(f"{path}: {nan} of {len(table.scores)} scores are NaN")
    return table


def label_from_trials(table: ScoreTable, trials: TrialPairs) -> ScoreTable:
    """The table with its labels taken from a labelled trial list, matched by (enroll, test) pair.

    Raises:
        EmbeddingFileError: the table names no pairs, the list has no labels, or some scored pairs are not in it.
    """
    if table.enroll is None:
        raise EmbeddingFileError(f"{table.path}: a '{table.layout}' file names no trials to match with {trials.path}")
    if trials.labels is None:
        raise EmbeddingFileError(f"{trials.path}: the trial list has no labels")
    labels = {(e, t): int(l) for e, t, l in zip(trials.enroll, trials.test, trials.labels)}
    found = np.asarray([labels.get(pair, -1) for pair in zip(table.enroll, table.test)], dtype=np.int8)
    missing = np.flatnonzero(found < 0)
    if len(missing):
        shown = ", ".join(f"{table.enroll[i]} {table.test[i]}" for i in missing[:_SHOWN])
        raise EmbeddingFileError(f"{table.path}: {len(missing)} of {len(found)} scored trials are not in "
                                 f"{trials.path}, e.g. {shown}")
    return ScoreTable(table.scores, found, table.enroll, table.test, table.layout, table.path)
