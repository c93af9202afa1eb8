"""Training manifests: a CSV listing the audio files (relative to the data root) and their speakers.

Format: a header with `File` and `Speaker`, optionally `Session` and `Duration`, in any order; other columns are
kept in the file but ignored. Speaker labels are only used by supervised methods and analyses, but the column is
required so that every manifest can serve both.

`check_manifest` verifies every file up front (headers only, in parallel) and reports all problems at once, so a
broken corpus fails in seconds with the complete list instead of crashing a worker hours into training.
"""
from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
import soundfile as sf

REQUIRED_COLUMNS = ("File", "Speaker")
OPTIONAL_COLUMNS = ("Session", "Duration")
MAX_LISTED_PROBLEMS = 50


class ManifestError(ValueError):
    """An unusable manifest or manifest entry; the message names the file and the line."""


def session_of(file: str) -> str:
    """Default session of a file: its parent folder (VoxCeleb ids are speaker/session/utterance.wav)."""
    return PurePath(file).parent.name


@dataclass
class Manifest:
    """The rows of a manifest. `line_numbers[i]` is the CSV line of row i (header = line 1), for messages."""

    files: list[str]
    speakers: list[str]
    sessions: list[str] | None
    durations: list[float] | None
    path: str
    line_numbers: list[int] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def line_of(self, index: int) -> int:
        """CSV line number of row `index`."""
        return self.line_numbers[index] if self.line_numbers is not None else index + 2

    def speaker_ids(self) -> tuple[np.ndarray, list[str]]:
        """Integer labels (N,) int64 indexing the sorted list of speaker names, and that list."""
        names = sorted(set(self.speakers))
        index = {name: i for i, name in enumerate(names)}
        return np.fromiter((index[s] for s in self.speakers), dtype=np.int64, count=len(self.speakers)), names

    def subset(self, rows, path: str | Path | None = None, speakers: list[str] | None = None) -> Manifest:
        """The manifest of the given rows, in the given order (every column picked alike).

        Args:
            rows: (K,) row indices (or a boolean mask of length len(self)).
            path: the new manifest's path (messages, writing); default: this manifest's path, and then the
                line numbers still point into this manifest's file.
            speakers: (K,) labels replacing the picked rows' speakers (e.g. pseudo-labels).

        Returns:
            A new Manifest; this one is unchanged.

        Raises:
            ManifestError: `speakers` of another length than the rows.
            IndexError: a row outside [0, len(self)).
        """
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (len(self),):
                raise IndexError(f"{self.path}: a subset mask needs {len(self)} entries, got shape {rows.shape}")
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64).reshape(-1)
        if len(rows) and (int(rows.min()) < -len(self) or int(rows.max()) >= len(self)):
            raise IndexError(f"{self.path}: subset rows must be in [0, {len(self)})")
        picked = rows.tolist()

        def pick(values):
            return None if values is None else [values[i] for i in picked]

        if speakers is not None and len(speakers) != len(picked):
            raise ManifestError(f"{self.path}: {len(speakers)} speaker labels for a subset of {len(picked)} rows")
        lines = pick(self.line_numbers) if path is None else None
        if path is None and lines is None:
            lines = [i + 2 for i in picked]
        return Manifest(pick(self.files), list(speakers) if speakers is not None else pick(self.speakers),
                        pick(self.sessions), pick(self.durations), str(self.path if path is None else path), lines)


def read_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest CSV.

    Rows without a Session column get the default session `session_of(file)`.

    Args:
        path: CSV file.

    Returns:
        The manifest.

    Raises:
        ManifestError: missing file, missing File/Speaker column, no rows, blank File or Speaker, bad Duration.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise ManifestError(f"manifest not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise ManifestError(f"{path}: empty manifest (expected a header line 'File,Speaker[,Session][,Duration]')")
        header = [h.strip() for h in header]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ManifestError(f"{path}: missing column(s) {', '.join(missing)} in the header (line 1); "
                                f"columns present: {', '.join(header)}; required: {', '.join(REQUIRED_COLUMNS)}")
        column = {name: header.index(name) for name in REQUIRED_COLUMNS + OPTIONAL_COLUMNS if name in header}
        width = max(column.values()) + 1
        files, speakers, sessions, durations, lines = [], [], [], [], []
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue  # blank line
            if len(row) < width:
                raise ManifestError(f"{path}: line {line}: expected {len(header)} columns ({', '.join(header)}), "
                                    f"got {len(row)}: {','.join(row)!r}")
            file = row[column["File"]].strip()
            speaker = row[column["Speaker"]].strip()
            if not file:
                raise ManifestError(f"{path}: line {line}: blank File")
            if not speaker:
                raise ManifestError(f"{path}: line {line}: blank Speaker for {file}")
            files.append(file)
            speakers.append(speaker)
            lines.append(line)
            if "Session" in column:
                sessions.append(row[column["Session"]].strip() or session_of(file))
            if "Duration" in column:
                raw = row[column["Duration"]].strip()
                try:
                    durations.append(float(raw))
                except ValueError:
                    raise ManifestError(f"{path}: line {line}: Duration {raw!r} is not a number") from None
    if not files:
        raise ManifestError(f"{path}: empty manifest (a header but no rows)")
    if "Session" not in column:
        sessions = [session_of(f) for f in files]
    return Manifest(files, speakers, sessions, durations if "Duration" in column else None, path, lines)


def write_manifest(manifest: Manifest, path: str | Path) -> None:
    """Write File,Speaker[,Session][,Duration] CSV (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = list(REQUIRED_COLUMNS)
    columns = [manifest.files, manifest.speakers]
    if manifest.sessions is not None:
        header.append("Session")
        columns.append(manifest.sessions)
    if manifest.durations is not None:
        header.append("Duration")
        columns.append([f"{d:.4f}" for d in manifest.durations])
    lengths = {len(c) for c in columns}
    if len(lengths) != 1:
        raise ManifestError(f"{path}: cannot write a manifest whose columns have different lengths ({sorted(lengths)})")
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")  # plain Unix lines, like every other text file we write
        writer.writerow(header)
        writer.writerows(zip(*columns))


# ------------------------------------------------------------------------------------------------ checking


def _check_file(path: str, sample_rate: int, min_seconds: float, allow_resample: bool) -> tuple[float, str | None]:
    """(duration in seconds, problem or None) for one file, from its header only."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return 0.0, "missing"
    except OSError as error:
        return 0.0, f"cannot access ({error.strerror or error})"
    if os.path.isdir(path):
        return 0.0, "is a folder, not an audio file"
    if size == 0:
        return 0.0, "empty (0 bytes)"
    try:
        info = sf.info(path)
    except Exception as error:  # LibsndfileError, RuntimeError, TypeError depending on the file
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        return 0.0, f"not a readable audio file ({reason})"
    if info.frames <= 0 or info.samplerate <= 0:
        return 0.0, "empty (0 frames)"
    duration = info.frames / info.samplerate
    if not allow_resample and info.samplerate != sample_rate:
        return duration, f"sample rate {info.samplerate} Hz, expected {sample_rate} Hz"
    if min_seconds and duration < min_seconds:
        return duration, f"too short ({duration:.2f} s < {min_seconds:.2f} s)"
    return duration, None


def check_manifest(
    manifest: Manifest,
    data_root: str | Path,
    sample_rate: int,
    min_seconds: float | None,
    workers: int = 2,
    *,
    allow_resample: bool = True,
) -> list[float]:
    """Check every file of a manifest and report all unusable ones in one error.

    Only headers are read (soundfile.info), in a thread pool, so a million files take minutes at most.

    Args:
        manifest: the manifest to check.
        data_root: folder the File paths are relative to.
        sample_rate: the training rate in Hz.
        min_seconds: shortest usable duration (None or 0: no minimum), e.g. the longest view.
        workers: threads reading headers.
        allow_resample: when False, files whose rate differs from `sample_rate` are reported (by default they
            are fine: the loader resamples them).

    Returns:
        Duration in seconds of every file, in manifest order.

    Raises:
        ManifestError: listing every problem as "line N: path: reason" (first 50, then a count).
    """
    root = Path(data_root)
    paths = [str(root / f) for f in manifest.files]
    chunk = 256

    def run(start: int) -> list[tuple[float, str | None]]:
        return [_check_file(p, sample_rate, min_seconds or 0.0, allow_resample) for p in paths[start : start + chunk]]

    results: list[tuple[float, str | None]] = []
    if workers > 1 and len(paths) > chunk:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for part in pool.map(run, range(0, len(paths), chunk)):
                results.extend(part)
    else:
        for start in range(0, len(paths), chunk):
            results.extend(run(start))

    problems = [(i, reason) for i, (_, reason) in enumerate(results) if reason is not None]
    if problems:
        listed = problems[:MAX_LISTED_PROBLEMS]
        lines = [f"  line {manifest.line_of(i)}: {manifest.files[i]}: {reason}" for i, reason in listed]
        if len(problems) > MAX_LISTED_PROBLEMS:
            lines.append(f"  ... and {len(problems) - MAX_LISTED_PROBLEMS} more")
        raise ManifestError(f"{manifest.path}: {len(problems)} of {len(paths)} files are unusable "
                            f"(paths relative to {root}):\n" + "\n".join(lines))
    return [duration for duration, _ in results]


# ------------------------------------------------------------------------------------------------ import


def import_kaldi(wav_scp: str | Path, utt2spk: str | Path, out_csv: str | Path, data_root: str | Path) -> Manifest:
    """Write a manifest from a Kaldi data folder's wav.scp and utt2spk.

    Paths inside `data_root` are made relative to it; others are kept absolute. Relative paths in wav.scp are
    taken relative to the current directory (Kaldi's convention: the recipe folder). Piped commands
    ("sox ... |") and archive offsets are rejected: the loader reads files directly, so convert them first.

    Args:
        wav_scp: "uttid path" lines.
        utt2spk: "uttid speaker" lines.
        out_csv: manifest to write (File,Speaker,Session).
        data_root: the data root the manifest will be used with.

    Returns:
        The manifest written.

    Raises:
        ManifestError: malformed or piped wav.scp line, or an utterance without a speaker in utt2spk.
    """
    speakers: dict[str, str] = {}
    for number, line in _lines(utt2spk):
        parts = line.split()
        if len(parts) != 2:
            raise ManifestError(f"{utt2spk}: line {number}: expected 'uttid speaker', got {line!r}")
        speakers[parts[0]] = parts[1]
    root = Path(data_root).resolve()
    files, spk = [], []
    for number, line in _lines(wav_scp):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise ManifestError(f"{wav_scp}: line {number}: expected 'uttid path', got {line!r}")
        utt, location = parts[0], parts[1].strip()
        if location.endswith("|") or " | " in location:
            raise ManifestError(f"{wav_scp}: line {number}: piped command not supported ({location!r}); "
                                f"write the audio to files first (e.g. with Kaldi's wav-copy or sox)")
        if utt not in speakers:
            raise ManifestError(f"{wav_scp}: line {number}: utterance '{utt}' has no speaker in {utt2spk}")
        absolute = Path(location).resolve()
        try:
            file = absolute.relative_to(root).as_posix()
        except ValueError:
            file = str(absolute)
        files.append(file)
        spk.append(speakers[utt])
    if not files:
        raise ManifestError(f"{wav_scp}: no utterances")
    manifest = Manifest(files, spk, [session_of(f) for f in files], None, str(out_csv))
    write_manifest(manifest, out_csv)
    return manifest


def _lines(path: str | Path):
    """(line number, stripped line) of the non-blank lines of a text file."""
    if not os.path.isfile(path):
        raise ManifestError(f"file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield number, line.strip()
