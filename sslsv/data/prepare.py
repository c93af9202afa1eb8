"""Corpus preparation: VoxCeleb1/2, MUSAN and RIRs from the official archives to the layout training reads.

Result under the data root (the layout the registered trial sets and the configs expect):

```
voxceleb1/wav/idXXXXX/<video>/<utt>.wav    VoxCeleb1 dev + test audio (trial sets vox1_O/E/H read it)
voxceleb1/train.csv                        VoxCeleb1 dev minus the VoxCeleb1-O test speakers
voxceleb1/veri_test2.txt, list_test_all2.txt, list_test_hard2.txt   cleaned trial lists, validated
voxceleb2/wav/idXXXXX/<video>/<utt>.wav    VoxCeleb2 dev, converted from m4a to 16 kHz mono wav
voxceleb2/train.csv                        File,Speaker,Session,Duration (File relative to the data root)
musan_split/{noise,music,speech}/...       MUSAN cut into short chunks, plus musan_split/list.csv
RIRS_NOISES/rirs.csv                       list of the impulse responses found, with their rates
```

Every step is resumable: archive members already extracted with the right size, and converted or cut files that
already exist and are not empty, are skipped, so a command interrupted after hours is simply run again. Nothing
is skipped silently otherwise: a bad checksum, a truncated archive, a missing ffmpeg, a trial utterance without
audio, each stops with a message naming the file.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import soundfile as sf

from sslsv.audio.io import AUDIO_SUFFIXES
from sslsv.data.manifest import Manifest, write_manifest
from sslsv.data.trials import TrialsError, read_trials

__all__ = [
    "PrepareError", "concatenate_parts", "download", "extract_zip", "ffmpeg_convert", "md5sum", "prepare_musan",
    "prepare_rirs", "prepare_voxceleb", "read_checksums", "read_url_file", "verify_checksums",
]

SAMPLE_RATE = 16000
TRIAL_FILES = ("veri_test2.txt", "list_test_all2.txt", "list_test_hard2.txt")
MAX_LISTED = 20

Converter = Callable[[Path, Path, int], None]


class PrepareError(RuntimeError):
    """A corpus that cannot be prepared; the message names the archive, file or tool at fault."""


# ------------------------------------------------------------------------------------------------ checksums


def md5sum(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex md5 of a file, read in 4 MiB blocks (archives are tens of GB)."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_checksums(path: str | Path) -> dict[str, str]:
    """{file name: md5} from "md5  name" lines (md5sum's output format; "*name" binary marks accepted).

    Raises:
        PrepareError: missing file or a malformed line (file and line number named).
    """
    path = Path(path)
    if not path.is_file():
        raise PrepareError(f"checksum file not found: {path}")
    sums = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 32 or any(c not in "0123456789abcdefABCDEF" for c in parts[0]):
            raise PrepareError(f"{path}: line {number}: expected 'md5  name', got {line.strip()!r}")
        sums[Path(parts[1].lstrip("*")).name] = parts[0].lower()
    return sums


def verify_checksums(files: Iterable[Path], checksums: dict[str, str]) -> None:
    """Compare each file that has an entry in `checksums`; files without an entry are not checked.

    Raises:
        PrepareError: naming every archive whose md5 differs (a partial download or a corrupted copy).
    """
    bad = []
    for path in files:
        expected = checksums.get(Path(path).name)
        if expected is None:
            continue
        actual = md5sum(path)
        if actual != expected:
            bad.append(f"{path}: md5 {actual}, expected {expected}")
    if bad:
        raise PrepareError("checksum mismatch (download again or resume the download):\n  " + "\n  ".join(bad))


# ------------------------------------------------------------------------------------------------ archives


def concatenate_parts(parts: Sequence[Path], out: Path) -> Path:
    """Join split downloads (vox1_dev_wav_partaa, _partab, ...) into one archive, in name order.

    Skipped when `out` already has the summed size of the parts (a previous run finished); written to a
    temporary name and renamed, so an interrupted concatenation never looks complete.
    """
    parts = sorted(Path(p) for p in parts)
    if not parts:
        raise PrepareError(f"no parts to concatenate into {out}")
    total = sum(p.stat().st_size for p in parts)
    if out.is_file() and out.stat().st_size == total:
        return out
    tmp = out.with_name(out.name + ".partial")
    with open(tmp, "wb") as sink:
        for part in parts:
            with open(part, "rb") as source:
                shutil.copyfileobj(source, sink, 1 << 22)
    os.replace(tmp, out)
    return out


def extract_zip(archive: str | Path, dest: str | Path, progress: bool = False) -> list[str]:
    """Extract a zip archive into `dest`, skipping members already present with the right size.

    Members are written to a temporary name and renamed, so a kill never leaves a half-written file that a
    later run would take as done. Member paths that would escape `dest` are refused.

    Returns:
        The member names (files only) of the archive, extracted or already present.

    Raises:
        PrepareError: the archive is missing, not a zip, truncated, or a member fails its CRC check (the
            message names the archive and, when known, the member).
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise PrepareError(f"archive not found: {archive}")
    try:
        handle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as error:
        raise PrepareError(f"{archive}: not a readable zip archive ({error}); the download is probably truncated "
                           f"or corrupted: check its md5 (--checksums) and download it again") from None
    names = []
    root = dest.resolve()
    with handle:
        members = [m for m in handle.infolist() if not m.is_dir()]
        for member in members:
            target = (dest / member.filename).resolve()
            if root not in target.parents:
                raise PrepareError(f"{archive}: member {member.filename!r} would be written outside {dest}")
            names.append(member.filename)
            if target.is_file() and target.stat().st_size == member.file_size:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".partial")
            try:
                with handle.open(member) as source, open(tmp, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
            except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
                tmp.unlink(missing_ok=True)
                raise PrepareError(f"{archive}: member {member.filename} is corrupted ({error}); "
                                   f"download the archive again") from None
            os.replace(tmp, target)
    return names


def download(urls: Sequence[tuple[str, str]], dest: str | Path, checksums: dict[str, str] | None = None) -> list[Path]:
    """Download (url, file name) pairs into `dest`, resuming partial files with HTTP Range requests.

    Optional convenience: VoxCeleb needs a registration, so the URLs come from the user (--url-file). A
    server that ignores Range (status 200 instead of 206) restarts the file from the beginning.
    """
    import urllib.request

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for url, name in urls:
        path = dest / name
        partial = path.with_name(name + ".partial")
        if path.is_file() and (checksums is None or name not in checksums or md5sum(path) == checksums[name]):
            out.append(path)
            continue
        offset = partial.stat().st_size if partial.is_file() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        try:
            with urllib.request.urlopen(request) as response:
                mode = "ab" if offset and response.status == 206 else "wb"
                with open(partial, mode) as sink:
                    shutil.copyfileobj(response, sink, 1 << 22)
        except OSError as error:
            raise PrepareError(f"download of {url} failed ({error}); run the command again to resume") from None
        os.replace(partial, path)
        out.append(path)
    if checksums:
        verify_checksums(out, checksums)
    return out


def read_url_file(path: str | Path) -> list[tuple[str, str]]:
    """(url, file name) from lines "URL [NAME]"; NAME defaults to the URL's last path component."""
    pairs = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts or line.lstrip().startswith("#"):
            continue
        if len(parts) > 2:
            raise PrepareError(f"{path}: line {number}: expected 'URL [NAME]', got {line.strip()!r}")
        name = parts[1] if len(parts) == 2 else parts[0].rstrip("/").rsplit("/", 1)[-1].split("?")[0]
        pairs.append((parts[0], name))
    return pairs


# ------------------------------------------------------------------------------------------------ conversion


def ffmpeg_convert(src: Path, dst: Path, sample_rate: int = SAMPLE_RATE) -> None:
    """Decode any audio file with ffmpeg into 16-bit mono wav at `sample_rate` (atomic rename)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise PrepareError("ffmpeg was not found on PATH; it is needed to convert VoxCeleb2 m4a files to wav "
                           "(install it, e.g. `apt-get install ffmpeg` or `conda install ffmpeg`)")
    tmp = dst.with_name(dst.stem + ".partial.wav")
    result = subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", str(src), "-ac", "1",
                             "-ar", str(sample_rate), "-acodec", "pcm_s16le", str(tmp)], capture_output=True, text=True)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise PrepareError(f"ffmpeg failed on {src}: {result.stderr.strip()[-500:]}")
    os.replace(tmp, dst)


def convert_all(pairs: Sequence[tuple[Path, Path]], converter: Converter | None = None, workers: int = 4,
                sample_rate: int = SAMPLE_RATE, progress: bool = True) -> int:
    """Convert (source, destination) pairs in parallel; existing non-empty destinations are skipped.

    Threads suffice: each conversion runs in an ffmpeg subprocess. All failures are collected and reported
    together after the other files are done, so one bad file does not waste a night's conversion.

    Returns:
        The number of files converted in this call.
    """
    converter = converter or ffmpeg_convert
    todo = [(s, d) for s, d in pairs if not (d.is_file() and d.stat().st_size > 0)]
    if converter is ffmpeg_convert and todo and shutil.which("ffmpeg") is None:
        ffmpeg_convert(todo[0][0], todo[0][1])  # raises the clear "ffmpeg not found" error up front

    def one(pair: tuple[Path, Path]) -> str | None:
        src, dst = pair
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            converter(src, dst, sample_rate)
        except Exception as error:  # noqa: BLE001 - collected and reported with the file name
            return f"{src}: {error}"
        return None

    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="m4a -> wav", unit="file", file=sys.stderr)
    failures = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for failure in pool.map(one, todo):
            if failure:
                failures.append(failure)
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    if failures:
        listed = "\n  ".join(failures[:MAX_LISTED])
        more = f"\n  ... and {len(failures) - MAX_LISTED} more" if len(failures) > MAX_LISTED else ""
        raise PrepareError(f"{len(failures)} of {len(todo)} conversions failed:\n  {listed}{more}")
    return len(todo)


# ------------------------------------------------------------------------------------------------ VoxCeleb


def _speaker_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("id")) if folder.is_dir() else []


def _link_speakers(source: Path, target: Path) -> list[str]:
    """Make target/idXXXXX point at source/idXXXXX (symlinks: the wav corpus is not copied)."""
    target.mkdir(parents=True, exist_ok=True)
    speakers = []
    for speaker in _speaker_dirs(source):
        link = target / speaker.name
        if not link.exists():
            link.symlink_to(speaker.resolve(), target_is_directory=True)
        speakers.append(speaker.name)
    return speakers


def _durations(paths: Sequence[Path], workers: int) -> list[float]:
    """Duration of each file from its header (threads); unreadable files are collected into one error."""
    def one(path: Path) -> float | str:
        try:
            info = sf.info(str(path))
        except Exception as error:  # noqa: BLE001
            return f"{path}: not a readable audio file ({str(error).strip().splitlines()[-1] if str(error).strip() else error})"
        return info.frames / info.samplerate if info.samplerate else f"{path}: sample rate 0"

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(one, paths))
    bad = [r for r in results if isinstance(r, str)]
    if bad:
        raise PrepareError(f"{len(bad)} unreadable audio file(s):\n  " + "\n  ".join(bad[:MAX_LISTED]))
    return [float(r) for r in results]


def _write_voxceleb_manifest(data_root: Path, wav_dir: Path, speakers: Iterable[str], out: Path,
                             workers: int) -> Manifest:
    """Manifest File,Speaker,Session,Duration of every wav of `speakers` under wav_dir (File relative to root)."""
    files = []
    for speaker in sorted(set(speakers)):
        folder = wav_dir / speaker
        files.extend(sorted(p for p in folder.rglob("*.wav") if not p.name.endswith(".partial.wav")))
    if not files:
        raise PrepareError(f"no wav files for the {len(set(speakers))} speaker(s) under {wav_dir}")
    relative = [os.path.relpath(p, data_root).replace(os.sep, "/") for p in files]
    durations = _durations(files, workers)
    manifest = Manifest(relative, [Path(r).parts[-3] for r in relative], [Path(r).parts[-2] for r in relative],
                        durations, str(out))
    write_manifest(manifest, out)
    return manifest


def _install_trials(trials_dir: Path, vox1_dir: Path) -> dict[str, set[str]]:
    """Copy the cleaned trial lists into voxceleb1/, checking format and that every utterance has audio.

    Returns:
        {file name: speakers it references} for each list installed.
    """
    found = {name: trials_dir / name for name in TRIAL_FILES if (trials_dir / name).is_file()}
    if not found:
        raise PrepareError(f"--trials-dir {trials_dir}: none of {', '.join(TRIAL_FILES)} found there "
                           f"(download the cleaned lists from the VoxCeleb website)")
    speakers = {}
    for name, path in found.items():
        try:
            trials = read_trials(path)
        except TrialsError as error:
            raise PrepareError(str(error)) from None
        missing = [u for u in trials.utterances() if not (vox1_dir / "wav" / u).is_file()]
        if missing:
            listed = "\n  ".join(missing[:MAX_LISTED])
            more = f"\n  ... and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
            raise PrepareError(f"{path}: {len(missing)} utterance(s) have no audio under {vox1_dir / 'wav'}:\n"
                               f"  {listed}{more}\n(extract both vox1_dev_wav and vox1_test_wav)")
        if (vox1_dir / name).resolve() != path.resolve():
            shutil.copyfile(path, vox1_dir / name)
        speakers[name] = {u.split("/", 1)[0] for u in trials.utterances()}
    return speakers


def _vox1_source(source: Path, split: str, vox1_dir: Path, checksums: dict[str, str] | None) -> list[str]:
    """Bring VoxCeleb1 `split` (dev/test) into vox1_dir/wav; return its speakers (empty when absent)."""
    folder = source / f"vox1_{split}_wav" / "wav"
    archive = source / f"vox1_{split}_wav.zip"
    parts = sorted(source.glob(f"vox1_{split}_wav_part*"))
    if folder.is_dir():
        return _link_speakers(folder, vox1_dir / "wav")
    if not archive.is_file() and parts:
        archive = concatenate_parts(parts, source / f"vox1_{split}_wav.zip")
    if archive.is_file():
        if checksums:
            verify_checksums([archive], checksums)
        members = extract_zip(archive, vox1_dir)  # members are wav/idXXXXX/<video>/<utt>.wav
        return sorted({Path(m).parts[1] for m in members if len(Path(m).parts) >= 4})
    return []


def _vox2_pairs(source: Path, vox2_dir: Path, checksums: dict[str, str] | None) -> list[tuple[Path, Path]]:
    """(m4a, wav) pairs for VoxCeleb2 dev, extracting vox2_dev_aac.zip (or its parts) first when needed."""
    folder = source / "dev" / "aac"
    if not folder.is_dir():
        folder = source / "vox2_dev_aac" / "dev" / "aac"
    if not folder.is_dir():
        archive = source / "vox2_dev_aac.zip"
        parts = sorted(source.glob("vox2_dev_aac_part*"))
        if not archive.is_file() and parts:
            archive = concatenate_parts(parts, archive)
        if not archive.is_file():
            return []
        if checksums:
            verify_checksums([archive], checksums)
        extract_zip(archive, vox2_dir)
        folder = vox2_dir / "dev" / "aac"
    files = sorted(folder.rglob("*.m4a"))
    return [(f, vox2_dir / "wav" / f.relative_to(folder).with_suffix(".wav")) for f in files]


def prepare_voxceleb(source: str | Path, data_root: str | Path, trials_dir: str | Path | None = None,
                     checksums: str | Path | dict | None = None, workers: int = 4, converter: Converter | None = None,
                     versions: Sequence[str] = ("1", "2"), progress: bool = True) -> dict[str, object]:
    """Prepare VoxCeleb1 and/or VoxCeleb2 from the official archives or folders in `source`.

    VoxCeleb1 dev/test come as folders (vox1_dev_wav/wav/...), zips (vox1_dev_wav.zip) or split parts
    (vox1_dev_wav_parta*); both end up in <data_root>/voxceleb1/wav. The training manifest voxceleb1/train.csv
    holds the dev speakers that do not occur in VoxCeleb1-O (veri_test2.txt), the usual VoxCeleb1 training
    set; VoxCeleb1-E/H span all of VoxCeleb1, so a model trained on it is only evaluated on vox1_O.
    VoxCeleb2 dev (vox2_dev_aac.zip or dev/aac/...) is converted to 16 kHz mono wav in <data_root>/voxceleb2/wav.

    Args:
        source: folder holding the downloads.
        data_root: output data root (what dataset.data_root points at).
        trials_dir: folder with the cleaned lists veri_test2.txt, list_test_all2.txt, list_test_hard2.txt.
        checksums: "md5  name" file or {name: md5}; archives listed there are verified before extraction.
        workers: parallel conversions / header reads.
        converter: converter(src, dst, sample_rate) for m4a files (default: ffmpeg); tests inject a fake.
        versions: which of "1", "2" to prepare.

    Returns:
        {"voxceleb1": Manifest or None, "voxceleb2": Manifest or None, "trials": [installed trial files]}.

    Raises:
        PrepareError: nothing to prepare, bad checksum, corrupt archive, failed conversion, missing trial audio.
    """
    source, root = Path(source), Path(data_root)
    if not source.is_dir():
        raise PrepareError(f"source folder not found: {source}")
    sums = read_checksums(checksums) if isinstance(checksums, (str, Path)) else checksums
    result: dict[str, object] = {"voxceleb1": None, "voxceleb2": None, "trials": []}
    if "1" in versions:
        vox1 = root / "voxceleb1"
        vox1.mkdir(parents=True, exist_ok=True)
        dev = _vox1_source(source, "dev", vox1, sums)
        test = _vox1_source(source, "test", vox1, sums)
        if not dev and not test and not _speaker_dirs(vox1 / "wav"):
            raise PrepareError(f"{source}: no VoxCeleb1 found (expected vox1_dev_wav/wav/, vox1_dev_wav.zip or "
                               f"vox1_dev_wav_parta*, and the same for vox1_test_wav)")
        test_speakers = set(test)
        if trials_dir is not None:
            referenced = _install_trials(Path(trials_dir), vox1)
            result["trials"] = [str(vox1 / name) for name in referenced]
            test_speakers |= referenced.get("veri_test2.txt", set())
        if dev:
            train = [s for s in dev if s not in test_speakers]
            result["voxceleb1"] = _write_voxceleb_manifest(root, vox1 / "wav", train, vox1 / "train.csv", workers)
    if "2" in versions:
        vox2 = root / "voxceleb2"
        pairs = _vox2_pairs(source, vox2, sums)
        if not pairs and not _speaker_dirs(vox2 / "wav"):
            message = (f"{source}: no VoxCeleb2 found (expected vox2_dev_aac.zip, vox2_dev_aac_part* "
                       f"or dev/aac/idXXXXX/<video>/<utt>.m4a)")
            if "1" not in versions:
                raise PrepareError(message)
            print(f"note: {message}; VoxCeleb2 skipped (use --versions 1 to silence this)", file=sys.stderr)
        else:
            convert_all(pairs, converter, workers, progress=progress)
            speakers = [p.name for p in _speaker_dirs(vox2 / "wav")]
            result["voxceleb2"] = _write_voxceleb_manifest(root, vox2 / "wav", speakers, vox2 / "train.csv", workers)
    return result


# ------------------------------------------------------------------------------------------------ MUSAN / RIRs


def _read_mono(path: Path, sample_rate: int) -> np.ndarray:
    from sslsv.audio.io import AudioError, read_audio

    try:
        return read_audio(path, sample_rate)
    except AudioError as error:
        raise PrepareError(str(error)) from None


def prepare_musan(musan_dir: str | Path, data_root: str | Path, chunk_seconds: float = 5.0,
                  min_seconds: float = 1.0, sample_rate: int = SAMPLE_RATE, workers: int = 2) -> Path:
    """Cut MUSAN into `chunk_seconds` pieces at `sample_rate` under <data_root>/musan_split/<category>/...

    MUSAN files are up to several minutes long; drawing a 2-4 s noise crop from small files keeps each read
    short and makes every chunk equally likely. A final remainder shorter than `min_seconds` is dropped (it
    would mostly be repeated to fill a crop); the count of dropped seconds is printed. A file whose chunks all
    exist already is skipped. Writes musan_split/list.csv (File,Category,Duration; File relative to data_root).

    Returns:
        The musan_split folder (use augmentation.musan_dir=musan_split).
    """
    musan_dir, root = Path(musan_dir), Path(data_root)
    categories = ("noise", "music", "speech")
    missing = [c for c in categories if not (musan_dir / c).is_dir()]
    if missing:
        raise PrepareError(f"{musan_dir}: missing MUSAN folder(s) {', '.join(missing)} (expected noise/, music/, speech/)")
    out_dir = root / "musan_split"
    chunk = int(round(chunk_seconds * sample_rate))
    shortest = int(round(min_seconds * sample_rate))
    if chunk <= 0:
        raise PrepareError(f"chunk_seconds must be positive, got {chunk_seconds}")

    def one(args: tuple[str, Path]) -> list[tuple[str, str, float]]:
        category, path = args
        rel = path.relative_to(musan_dir / category).with_suffix("")
        rate, frames = sf.info(str(path)).samplerate, sf.info(str(path)).frames
        expected = -(-frames * sample_rate // rate)
        count = expected // chunk + (1 if expected % chunk >= shortest else 0)
        targets = [out_dir / category / rel.parent / f"{rel.name}_{k:03d}.wav" for k in range(count)]
        if not all(t.is_file() and t.stat().st_size > 44 for t in targets):
            audio = _read_mono(path, sample_rate)
            for k, target in enumerate(targets):
                piece = audio[k * chunk : (k + 1) * chunk]
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.stem + ".partial.wav")
                sf.write(str(tmp), piece, sample_rate, subtype="PCM_16")
                os.replace(tmp, target)
        return [(os.path.relpath(t, root).replace(os.sep, "/"), category,
                 sf.info(str(t)).frames / sample_rate) for t in targets]

    jobs = [(c, p) for c in categories for p in sorted((musan_dir / c).rglob("*")) if p.suffix.lower() in AUDIO_SUFFIXES]
    if not jobs:
        raise PrepareError(f"{musan_dir}: no audio files under noise/, music/, speech/")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        rows = [row for rows in pool.map(one, jobs) for row in rows]
    with open(out_dir / "list.csv", "w", encoding="utf-8") as handle:
        handle.write("File,Category,Duration\n")
        handle.writelines(f"{f},{c},{d:.4f}\n" for f, c, d in rows)
    return out_dir


def prepare_rirs(rirs_dir: str | Path, data_root: str | Path, sample_rate: int = SAMPLE_RATE,
                 subsets: Sequence[str] = ("simulated_rirs",)) -> Path:
    """List the impulse responses of RIRS_NOISES/<subset>/** into <data_root>/RIRS_NOISES/rirs.csv.

    The augmentation reads RIRs from a folder (augmentation.rir_dir) and resamples any rate; the list records
    each file's rate and length, and every file is opened once here so that a broken file fails now rather than
    in a data-loader worker. Files at another rate than `sample_rate` are reported in the returned list's log
    line (resampled on the fly, at a cost).

    Returns:
        The rirs.csv path.
    """
    rirs_dir, root = Path(rirs_dir), Path(data_root)
    rows, problems, other_rate = [], [], 0
    for subset in subsets:
        folder = rirs_dir / subset
        if not folder.is_dir():
            raise PrepareError(f"{folder} not found (expected RIRS_NOISES/simulated_rirs or real_rirs_isotropic_noises)")
        for path in sorted(folder.rglob("*.wav")):
            try:
                info = sf.info(str(path))
            except Exception as error:  # noqa: BLE001
                problems.append(f"{path}: not a readable audio file ({error})")
                continue
            if info.frames == 0:
                problems.append(f"{path}: empty")
                continue
            other_rate += info.samplerate != sample_rate
            rows.append((os.path.relpath(path.resolve(), root.resolve()).replace(os.sep, "/"), info.samplerate,
                         info.frames / info.samplerate))
    if problems:
        raise PrepareError(f"{len(problems)} unusable impulse response(s):\n  " + "\n  ".join(problems[:MAX_LISTED]))
    if not rows:
        raise PrepareError(f"no wav files under {rirs_dir} / {', '.join(subsets)}")
    out = root / "RIRS_NOISES" / "rirs.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as handle:
        handle.write("File,SampleRate,Duration\n")
        handle.writelines(f"{f},{r},{d:.4f}\n" for f, r, d in rows)
    if other_rate:
        print(f"note: {other_rate} of {len(rows)} RIRs are not at {sample_rate} Hz; they are resampled when drawn")
    return out

