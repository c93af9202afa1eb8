"""Training manifests: a CSV listing the audio files (relative to the data root) and their speakers.

Format: a header with `File` and `Speaker`, optionally `Session` and `Duration`, in any order; other columns are
kept in the file but ignored. Speaker labels are only used by supervised methods and analyses, but the column is
required so that every manifest can serve both.

`check_manifest` verifies every file up front (headers only, in parallel) and reports all problems at once, so a
broken corpus fails in seconds with the complete list instead of crashing a worker hours into training.
`deep_check_manifest` (`sslsv check-manifest --deep`) decodes every file for what headers cannot show: NaN/Inf
samples, data shorter than its header, silence.
"""
from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np

from sslsv.audio.io import MIN_AUDIO_SECONDS, AudioError, audio_info, read_audio

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
        file_rate, frames, _ = audio_info(path, min_seconds=0.0)
    except AudioError as error:
        return 0.0, error.reason
    duration = frames / file_rate
    if not allow_resample and file_rate != sample_rate:
        return duration, f"sample rate {file_rate} Hz, expected {sample_rate} Hz"
    shortest = max(min_seconds, MIN_AUDIO_SECONDS)
    if duration < shortest:
        return duration, f"too short ({duration:.2f} s < {shortest:.2f} s)"
    return duration, None


def duplicate_rows(manifest: Manifest) -> list[tuple[int, str, list[int]]]:
    """Rows naming a file that an earlier row names already (the same path once normalised).

    Returns:
        (row index, file, CSV lines of the earlier rows) for every repeated row, in manifest order.
    """
    first_rows: dict[str, list[int]] = {}
    repeats = []
    for row, file in enumerate(manifest.files):
        earlier = first_rows.setdefault(os.path.normpath(file), [])
        if earlier:
            repeats.append((row, file, [manifest.line_of(r) for r in earlier]))
        earlier.append(row)
    return repeats


def _listing(manifest: Manifest, problems: list[tuple[int, str]]) -> list[str]:
    """'  line N: file: reason' lines for (row, reason) problems, the first MAX_LISTED_PROBLEMS and a count."""
    lines = [f"  line {manifest.line_of(i)}: {manifest.files[i]}: {reason}" for i, reason in problems[:MAX_LISTED_PROBLEMS]]
    if len(problems) > MAX_LISTED_PROBLEMS:
        lines.append(f"  ... and {len(problems) - MAX_LISTED_PROBLEMS} more")
    return lines


def _duplicate_reason(earlier_lines: list[int]) -> str:
    return f"duplicate row (the same file is on line {', '.join(map(str, earlier_lines))})"


def _map_chunks(function, items: list, workers: int, chunk: int = 256, progress=None) -> list:
    """[function(item) for item in items], run in chunks on a thread pool (file system and decoder calls
    release the GIL), in order; `progress(n)` is called after each finished chunk of n items."""
    def run(start: int) -> list:
        return [function(item) for item in items[start : start + chunk]]

    results: list = []
    starts = range(0, len(items), chunk)
    if workers > 1 and len(items) > chunk:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            parts = pool.map(run, starts)
            for part in parts:
                results.extend(part)
                if progress is not None:
                    progress(len(part))
    else:
        for start in starts:
            part = run(start)
            results.extend(part)
            if progress is not None:
                progress(len(part))
    return results


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

    Only headers are read (soundfile.info, and the RIFF chunk sizes of WAV files), in a thread pool, so a million
    files take minutes at most. Found: duplicate rows, missing files, directories, unreadable, empty, too short
    (below `min_seconds` or MIN_AUDIO_SECONDS), WAV data shorter than its header, wrong rate (optional).
    NaN samples and truncated FLAC data need decoding: `deep_check_manifest`.

    Args:
        manifest: the manifest to check.
        data_root: folder the File paths are relative to.
        sample_rate: the training rate in Hz.
        min_seconds: shortest usable duration (None or 0: MIN_AUDIO_SECONDS), e.g. the longest view.
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
    results = _map_chunks(lambda p: _check_file(p, sample_rate, min_seconds or 0.0, allow_resample), paths, workers)
    problems = [(i, reason) for i, (_, reason) in enumerate(results) if reason is not None]
    problems += [(row, _duplicate_reason(lines)) for row, _, lines in duplicate_rows(manifest)]
    if problems:
        problems.sort()
        unusable = len({i for i, _ in problems})
        raise ManifestError(f"{manifest.path}: {unusable} of {len(paths)} rows are unusable "
                            f"(paths relative to {root}):\n" + "\n".join(_listing(manifest, problems)))
    return [duration for duration, _ in results]


# ------------------------------------------------------------------------------------------------ deep check

SILENCE_PEAK = 1e-4  # a file whose largest |sample| is below this (-80 dBFS) is reported as silent


@dataclass
class FileProblem:
    """One problem of one manifest row. `kind` groups problems in summaries (AudioError.kind, "duplicate",
    "sample rate", "silent")."""

    line: int
    file: str
    kind: str
    reason: str


@dataclass
class DeepCheckReport:
    """What `deep_check_manifest` found: errors make a file unusable, warnings (silence) do not."""

    manifest: str
    data_root: str
    files: int
    seconds: float
    errors: list[FileProblem]
    warnings: list[FileProblem]

    def summary(self, listed: int = 5) -> str:
        """Totals, then per kind of problem its count and the first `listed` files."""
        lines = [f"{self.manifest}: {self.files} files, {self.seconds / 3600:.2f} h decoded "
                 f"(paths relative to {self.data_root})"]
        for title, problems in (("errors", self.errors), ("warnings", self.warnings)):
            if not problems:
                lines.append(f"{title}: none")
                continue
            lines.append(f"{title}: {len(problems)} in {len({p.line for p in problems})} rows")
            kinds: dict[str, list[FileProblem]] = {}
            for problem in problems:
                kinds.setdefault(problem.kind, []).append(problem)
            for kind, group in kinds.items():
                lines.append(f"  {kind}: {len(group)}")
                lines += [f"    line {p.line}: {p.file}: {p.reason}" for p in group[:listed]]
                if len(group) > listed:
                    lines.append(f"    ... and {len(group) - listed} more")
        return "\n".join(lines)


def _deep_check_file(path: str, sample_rate: int, min_seconds: float, allow_resample: bool,
                     silence_peak: float) -> tuple[float, list[tuple[str, str, str]]]:
    """(seconds, [(severity "error"/"warning", kind, reason)]) for one file, decoded completely."""
    try:
        file_rate, frames, _ = audio_info(path, min_seconds=0.0)
    except AudioError as error:
        return 0.0, [("error", error.kind, error.reason)]
    seconds = frames / file_rate
    found = []
    if not allow_resample and file_rate != sample_rate:
        found.append(("error", "sample rate", f"sample rate {file_rate} Hz, expected {sample_rate} Hz"))
    shortest = max(min_seconds, MIN_AUDIO_SECONDS)
    if seconds < shortest:
        found.append(("error", "too short", f"too short ({seconds:.2f} s < {shortest:.2f} s)"))
    try:
        audio = read_audio(path, file_rate, min_seconds=0.0)  # the file's own rate: nothing is resampled
    except AudioError as error:
        return seconds, found + [("error", error.kind, error.reason)]
    peak = float(np.abs(audio).max())
    if peak < silence_peak:
        found.append(("warning", "silent", f"silent (peak |sample| {peak:.1e} < {silence_peak:.0e})"))
    return seconds, found


def deep_check_manifest(
    manifest: Manifest,
    data_root: str | Path,
    sample_rate: int,
    min_seconds: float | None = None,
    workers: int = 4,
    progress: bool = True,
    *,
    allow_resample: bool = True,
    silence_peak: float = SILENCE_PEAK,
) -> DeepCheckReport:
    """Decode every file of a manifest and report what a header check cannot see.

    Errors: everything `check_manifest` finds, plus NaN/Inf samples and data shorter than its header in any
    format (a FLAC cut short). Warning: silence (every |sample| below `silence_peak`), which loads and trains
    but carries no speaker.

    Args:
        manifest: the manifest to check.
        data_root: folder the File paths are relative to.
        sample_rate: the training rate in Hz (only used with allow_resample=False).
        min_seconds: shortest usable duration (None or 0: MIN_AUDIO_SECONDS).
        workers: threads decoding files.
        progress: a tqdm progress bar on stderr.
        allow_resample: when False, files at another rate than `sample_rate` are errors.
        silence_peak: the peak below which a file is reported as silent.

    Returns:
        The report (see DeepCheckReport.summary); nothing is raised for bad files.
    """
    from tqdm import tqdm

    root = Path(data_root)
    paths = [str(root / f) for f in manifest.files]
    with tqdm(total=len(paths), desc="decoding", unit="file", disable=not progress) as bar:
        results = _map_chunks(
            lambda p: _deep_check_file(p, sample_rate, min_seconds or 0.0, allow_resample, silence_peak),
            paths, workers, chunk=32, progress=bar.update)
    errors, warnings = [], []
    for row, (_, found) in enumerate(results):
        for severity, kind, reason in found:
            problem = FileProblem(manifest.line_of(row), manifest.files[row], kind, reason)
            (errors if severity == "error" else warnings).append(problem)
    errors += [FileProblem(manifest.line_of(row), file, "duplicate", _duplicate_reason(lines))
               for row, file, lines in duplicate_rows(manifest)]
    errors.sort(key=lambda p: p.line)
    return DeepCheckReport(manifest.path, str(root), len(paths), sum(seconds for seconds, _ in results),
                           errors, warnings)


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
    for number, utt, location in _wav_scp_entries(wav_scp):
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


def read_wav_scp(wav_scp: str | Path) -> tuple[list[str], list[str]]:
    """Utterance ids and audio paths of a Kaldi wav.scp ("uttid path" lines), in file order.

    Paths are returned as written (relative ones are relative to the current directory, Kaldi's convention: the
    recipe folder). Piped commands ("sox ... |") and archive offsets ("foo.ark:123") are refused: sslsv reads
    audio files directly, so convert them first.

    Raises:
        ManifestError: missing file, malformed or piped line, repeated utterance id, no utterance.
    """
    ids: list[str] = []
    paths: list[str] = []
    seen: dict[str, int] = {}
    for number, utt, location in _wav_scp_entries(wav_scp):
        if utt in seen:
            raise ManifestError(f"{wav_scp}: line {number}: utterance id '{utt}' already on line {seen[utt]}")
        seen[utt] = number
        ids.append(utt)
        paths.append(location)
    if not ids:
        raise ManifestError(f"{wav_scp}: no utterances")
    return ids, paths


def _wav_scp_entries(wav_scp: str | Path):
    """(line number, utterance id, path) of each line of a wav.scp; ManifestError for malformed or piped lines."""
    for number, line in _lines(wav_scp):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise ManifestError(f"{wav_scp}: line {number}: expected 'uttid path', got {line!r}")
        utt, location = parts[0], parts[1].strip()
        if location.endswith("|") or " | " in location:
            raise ManifestError(f"{wav_scp}: line {number}: piped command not supported ({location!r}); "
                                f"write the audio to files first (e.g. with Kaldi's wav-copy or sox)")
        if not os.path.exists(location) and ".ark:" in location:
            raise ManifestError(f"{wav_scp}: line {number}: archive offset not supported ({location!r}); "
                                f"write the audio to files first (e.g. with Kaldi's wav-copy)")
        yield number, utt, location


def _lines(path: str | Path):
    """(line number, stripped line) of the non-blank lines of a text file."""
    if not os.path.isfile(path):
        raise ManifestError(f"file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield number, line.strip()
