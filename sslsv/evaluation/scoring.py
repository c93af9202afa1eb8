"""Trial scoring: map trial utterances to embedding rows, cosine-score all pairs, score files.

Trial lists are large (VoxCeleb1-H: 550k trials, 580k for some lists) while the
number of distinct utterances is much smaller, so embeddings are computed once per
utterance and trials become pairs of row indices. Scoring is then a batched gather +
dot product on whatever device holds the embeddings; nothing loops over trials in
Python except the single dict look-up per trial utterance in index_trials.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

_WHITESPACE = re.compile(r"\s")

__all__ = ["ScoreFile", "cosine_scores", "index_trials", "read_scores", "write_scores"]


def index_trials(trials_enroll: Sequence[str], trials_test: Sequence[str],
                 keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of each trial's enrolment and test utterance in the embedding matrix.

    Args:
        trials_enroll: (num_trials,) enrolment utterance of each trial.
        trials_test: (num_trials,) test utterance of each trial.
        keys: (N,) utterance of each embedding row (rows of extract_embeddings' output).
            If an utterance appears twice, its first row is used.

    Returns:
        (enroll_idx, test_idx), each an int64 array of shape (num_trials,).

    Raises:
        ValueError: the two trial lists have different lengths.
        KeyError: some trial utterances are not in `keys` (the message names the first few).
    """
    if len(trials_enroll) != len(trials_test):
        raise ValueError(f"enrolment and test lists differ in length: {len(trials_enroll)} vs {len(trials_test)}")
    index: dict[str, int] = {}
    for row, key in enumerate(keys):
        index.setdefault(key, row)

    def lookup(utterances: Sequence[str]) -> np.ndarray:
        rows = np.fromiter((index.get(u, -1) for u in utterances), dtype=np.int64, count=len(utterances))
        missing = np.flatnonzero(rows < 0)
        if len(missing):
            names = list(dict.fromkeys(utterances[i] for i in missing))
            raise KeyError(f"{len(names)} trial utterance(s) have no embedding, e.g. {names[:5]}")
        return rows

    return lookup(trials_enroll), lookup(trials_test)


def cosine_scores(embeddings: torch.Tensor, enroll_idx, test_idx, batch: int = 1_000_000) -> np.ndarray:
    """Cosine similarity of every trial pair, computed in chunks on the embeddings' device.

    Embeddings are L2-normalised once (N rows) rather than per trial; each chunk of
    `batch` trials then costs two gathers and a row-wise dot product, which bounds
    memory at 2 * batch * D floats. A zero embedding gets score 0 with everything.

    Args:
        embeddings: (N, D) tensor (any device, any float dtype; computed in float32).
            A numpy array is accepted too.
        enroll_idx: (num_trials,) int row of each trial's enrolment utterance.
        test_idx: (num_trials,) int row of each trial's test utterance.
        batch: trials per chunk.

    Returns:
        (num_trials,) float32 numpy array of scores in [-1, 1].

    Raises:
        ValueError: index arrays have different lengths or embeddings are not 2-D.
        IndexError: an index is outside [0, N) (checked on CPU, so CUDA never asserts).
    """
    if not isinstance(embeddings, torch.Tensor):
        embeddings = torch.as_tensor(np.asarray(embeddings))
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {tuple(embeddings.shape)}")
    enroll = torch.as_tensor(np.asarray(enroll_idx), dtype=torch.int64).reshape(-1)
    test = torch.as_tensor(np.asarray(test_idx), dtype=torch.int64).reshape(-1)
    if enroll.shape != test.shape:
        raise ValueError(f"enroll_idx and test_idx differ in length: {len(enroll)} vs {len(test)}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    num_rows = embeddings.shape[0]
    for name, idx in (("enroll_idx", enroll), ("test_idx", test)):
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= num_rows):
            raise IndexError(f"{name} has values outside [0, {num_rows}): min {int(idx.min())}, max {int(idx.max())}")
    device = embeddings.device
    normed = F.normalize(embeddings.detach().float(), dim=1)
    scores = torch.empty(len(enroll), dtype=torch.float32)
    with torch.inference_mode():
        for start in range(0, len(enroll), batch):
            e = enroll[start:start + batch].to(device, non_blocking=True)
            t = test[start:start + batch].to(device, non_blocking=True)
            scores[start:start + batch] = (normed[e] * normed[t]).sum(dim=1).cpu()
    return scores.numpy()


class ScoreFile(NamedTuple):
    """Contents of a score file (see write_scores)."""

    enroll: list[str]
    test: list[str]
    scores: np.ndarray  # (num_trials,) float64
    labels: np.ndarray  # (num_trials,) int64


def write_scores(path: str | Path, enroll: Sequence[str], test: Sequence[str], scores, labels) -> None:
    """Write one line per trial, "enroll test score label", score with 6 decimals.

    Space-separated so the file reads like the usual Kaldi / VoxCeleb score files, or tab-separated when an
    utterance name contains whitespace (as trial lists with such paths are). Parent directories are created.

    Args:
        path: output file.
        enroll: (num_trials,) enrolment utterance names.
        test: (num_trials,) test utterance names.
        scores: (num_trials,) scores.
        labels: (num_trials,) 0/1 or bool labels.

    Raises:
        ValueError: lengths differ, or a name contains a tab or a line break.
    """
    scores = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    labels = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
    lengths = {len(enroll), len(test), len(scores), len(labels)}
    if len(lengths) != 1:
        raise ValueError(f"enroll, test, scores and labels differ in length: "
                         f"{len(enroll)}, {len(test)}, {len(scores)}, {len(labels)}")
    sep = " "
    for names in (enroll, test):
        joined = "\0".join(map(str, names))  # one C-level scan instead of a loop
        if _WHITESPACE.search(joined):
            if re.search(r"[\t\r\n]", joined):
                bad = next(str(n) for n in names if re.search(r"[\t\r\n]", str(n)))
                raise ValueError(f"utterance names must not contain tabs or line breaks, e.g. {bad!r}")
            sep = "\t"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One formatted string per line joined in C: ~3x faster than DataFrame.to_csv here.
    text = "".join(f"{e}{sep}{t}{sep}{s:.6f}{sep}{l}\n"
                   for e, t, s, l in zip(enroll, test, scores.tolist(), labels.tolist()))
    path.write_text(text, encoding="utf-8")


def read_scores(path: str | Path) -> ScoreFile:
    """Read a file written by write_scores.

    Args:
        path: score file.

    Returns:
        ScoreFile(enroll, test, scores, labels) with (num_trials,) lists / arrays.
    """
    if Path(path).stat().st_size == 0:
        return ScoreFile([], [], np.zeros(0, np.float64), np.zeros(0, np.int64))
    with open(path, "rb") as handle:
        sep = "\t" if b"\t" in handle.readline() else " "  # write_scores uses tabs when names have spaces
    frame = pd.read_csv(path, sep=sep, header=None, names=["enroll", "test", "score", "label"],
                        dtype={"enroll": str, "test": str, "label": np.int64}, keep_default_na=False,
                        na_values={"score": ["nan", "NaN"]}, na_filter=True, engine="c",
                        quoting=csv.QUOTE_NONE, encoding="utf-8")
    frame["score"] = frame["score"].astype(np.float64)
    return ScoreFile(frame["enroll"].tolist(), frame["test"].tolist(),
                     frame["score"].to_numpy(dtype=np.float64), frame["label"].to_numpy(dtype=np.int64))
