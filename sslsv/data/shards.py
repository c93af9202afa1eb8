"""Tar shards of a manifest (`sslsv shards`) and the streaming training dataset that reads them.

Writing. A manifest becomes tar shards of `utts_per_shard` utterances each, in the layout wespeaker reads
(tools/make_shard_list.py there): every utterance is two members, `<key>.spk` (the speaker name, UTF-8) then
`<key>.wav` (a WAV file at the training rate), where `<key>` is the manifest's File without its suffix. Next to the
shards: `shard.list` (one absolute shard path a line, wespeaker's `data_type: shard` list), `shards.json` (the plan,
and per shard its name, utterance count, size and SHA-256) and `rows.npy` / `labels.npy` (per position in the shard
stream: the manifest row and the speaker index). Utterances are shuffled once at writing (`seed`), so that one
shard mixes speakers and a shuffle buffer of a few thousand utterances gives varied batches. Shards are written in
parallel by a process pool, each to a temporary file renamed when complete; rerunning the same command keeps every
shard whose checksum matches and rewrites the others (missing, cut short by a kill, corrupted).

Reading. `ShardStream` is an IterableDataset that reads shards sequentially (stdlib `tarfile`, which skips the
members it does not need without reading them). For an epoch, the shards are ordered by (seed, epoch); the first
steps * global_batch utterances of that order (the same count as the file dataset's EpochBatchSampler) are cut into
contiguous, disjoint ranges, one per (rank, DataLoader worker): a range may start or end inside a shard, so no
utterance is read twice and every rank gets exactly its share. Each range goes through a shuffle buffer whose
output order is computed from indices alone (seeded by seed, epoch, rank and range), so resuming at step k skips the
first k batches without reading their audio, and the resumed stream is the uninterrupted one. The views, crops and
augmentation plans are those of the file dataset (sslsv.data.dataset.draw_views), drawn from the same per-sample
generator (run seed, epoch, manifest row): a shard sample equals the file dataset's sample of the same row.

The stream depends on the number of ranks and of DataLoader workers (the ranges are cut per worker): resume with
the same `dataset.num_workers` and world size (a changed value is warned about when resuming).

Why not webdataset or lhotse Shar: both install from PyPI, but webdataset splits whole shards over ranks and
workers (uneven counts per rank, which the trainer's lock-step all-reduce cannot take without padding or join) and
its shuffle buffer draws from a process-global RNG that cannot resume mid-epoch; lhotse Shar is another layout than
wespeaker's `.wav` + `.spk` tars. What is left once ranges and resume are exact is iterating over tar members, which
the standard library does.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import numpy as np
import soundfile as sf
from torch.utils.data import IterableDataset, get_worker_info

from sslsv.audio.augment import AugmentationSources
from sslsv.audio.io import AudioError, crop_waveform, read_audio, resample
from sslsv.config import ViewGroup
from sslsv.data.dataset import EpochBatchSampler, draw_views, view_specs
from sslsv.data.manifest import Manifest, ManifestError

SHARD_FORMAT = "sslsv-shards/1"
PLAN_FILE = "shards.json"
LIST_FILE = "shard.list"
DEFAULT_BUFFER = 2000  # shuffle buffer (utterances) of each reader


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _key(file: str) -> str:
    """The member key of a manifest file: its path without suffix (POSIX separators)."""
    return str(PurePosixPath(file.replace(os.sep, "/")).with_suffix(""))


# ------------------------------------------------------------------------------------------------ writing


@dataclass
class WriteReport:
    written: list[str]
    kept: list[str]
    rewritten: list[str]  # present but with a wrong checksum (corrupted, cut short)
    list_path: Path

    def summary(self) -> str:
        text = f"{self.list_path}: {len(self.written) + len(self.kept)} shards ({len(self.written)} written, " \
               f"{len(self.kept)} kept"
        if self.rewritten:
            text += f", {len(self.rewritten)} rewritten after a checksum mismatch: {', '.join(self.rewritten[:5])}"
        return text + ")"


def _wav_bytes(path: Path, sample_rate: int) -> bytes:
    """The WAV member of an utterance: the file's bytes when it is a WAV at `sample_rate`, else decoded (any format
    sslsv reads), resampled and written as 16-bit PCM."""
    if path.suffix.lower() == ".wav":
        try:
            if sf.info(str(path)).samplerate == sample_rate:
                return path.read_bytes()
        except (RuntimeError, sf.LibsndfileError):
            pass  # read_audio raises the one-line AudioError
    audio = read_audio(path, sample_rate)
    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # mtime 0: the same shard bytes on every run
    tar.addfile(info, io.BytesIO(data))


def _write_shard(path: str, items: list[tuple[str, str, str]], sample_rate: int) -> dict:
    """Write one shard (temporary file, fsync, rename); items are (key, audio path, speaker)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            with tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for key, audio, speaker in items:
                    _add(tar, f"{key}.spk", speaker.encode())
                    _add(tar, f"{key}.wav", _wav_bytes(Path(audio), sample_rate))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"name": target.name, "count": len(items), "bytes": target.stat().st_size, "sha256": sha256_of(target)}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_shards(manifest: Manifest, data_root: str | Path, out: str | Path, utts_per_shard: int = 1000,
                 workers: int = 4, sample_rate: int = 16000, seed: int = 0,
                 progress: Callable[[str], None] | None = None) -> WriteReport:
    """Write `manifest` as tar shards under `out` (module docstring); resumable: rerunning keeps complete shards
    whose SHA-256 matches shards.json and rewrites the others. Returns what was written, kept and rewritten."""
    if utts_per_shard < 1:
        raise ValueError(f"--utts-per-shard must be at least 1, got {utts_per_shard}")
    if len(manifest) == 0:
        raise ManifestError(f"{manifest.path}: no utterance to shard")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(manifest))
    keys = [_key(f) for f in manifest.files]
    if len(set(keys)) != len(keys):
        raise ManifestError(f"{manifest.path}: two files share a key (path without suffix); shard keys must be unique")
    labels, speakers = manifest.speaker_ids()
    plan = {"format": SHARD_FORMAT, "source": str(manifest.path), "num_utterances": len(manifest),
            "utts_per_shard": utts_per_shard, "seed": seed, "sample_rate": sample_rate,
            "plan_sha256": hashlib.sha256("\n".join(keys[r] for r in order).encode()).hexdigest(),
            "speakers": speakers}
    plan_path = out / PLAN_FILE
    previous: dict[str, dict] = {}
    if plan_path.exists():
        try:
            old = json.loads(plan_path.read_text())
        except ValueError:
            old = {}
        if any(old.get(k) != plan[k] for k in ("format", "plan_sha256", "utts_per_shard", "sample_rate")):
            raise FileExistsError(f"{out} holds shards of another manifest or other settings ({plan_path}); "
                                  f"write to another -o folder or delete it")
        previous = {entry["name"]: entry for entry in old.get("shards", []) if entry}
    chunks = [order[i : i + utts_per_shard] for i in range(0, len(order), utts_per_shard)]
    names = [f"shard_{i:06d}.tar" for i in range(len(chunks))]
    entries: list[dict | None] = [None] * len(chunks)
    report = WriteReport([], [], [], out / LIST_FILE)
    todo = []
    for i, name in enumerate(names):
        entry, path = previous.get(name), out / name
        if entry is not None and path.exists() and path.stat().st_size == entry["bytes"] \
                and sha256_of(path) == entry["sha256"]:
            entries[i] = entry
            report.kept.append(name)
            continue
        if path.exists():
            report.rewritten.append(name)
        todo.append(i)
    root = Path(data_root)
    np.save(out / "rows.npy", order.astype(np.int64))
    np.save(out / "labels.npy", labels[order].astype(np.int32))

    def save_plan() -> None:
        _atomic_write(plan_path, json.dumps({**plan, "shards": entries}, indent=1))

    save_plan()
    tasks = {i: (str(out / names[i]), [(keys[r], str(root / manifest.files[r]), manifest.speakers[r])
                                        for r in chunks[i]], sample_rate) for i in todo}
    if workers <= 1:
        for i, args in tasks.items():
            entries[i] = _write_shard(*args)
            report.written.append(names[i])
            save_plan()
            if progress:
                progress(f"{names[i]} ({len(report.written)}/{len(todo)})")
    elif tasks:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            pending = {pool.submit(_write_shard, *args): i for i, args in tasks.items()}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    i = pending.pop(future)
                    entries[i] = future.result()
                    report.written.append(names[i])
                    if progress:
                        progress(f"{names[i]} ({len(report.written)}/{len(todo)})")
                save_plan()  # after each batch of completions: a kill loses at most the shards being written
    save_plan()
    _atomic_write(out / LIST_FILE, "".join(f"{(out / n).resolve()}\n" for n in names))
    return report


def verify_shards(list_path: str | Path) -> list[str]:
    """Recompute the SHA-256 of every shard of a shard.list against shards.json; the problems, one line each
    (empty: all intact)."""
    list_path = Path(list_path)
    folder = list_path.parent
    try:
        known = {e["name"]: e for e in json.loads((folder / PLAN_FILE).read_text()).get("shards", []) if e}
        lines = [line.strip() for line in list_path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as error:
        raise ManifestError(f"{list_path}: cannot read the shard list or {folder / PLAN_FILE} ({error})") from None
    problems = []
    for line in lines:
        path = Path(line) if Path(line).is_absolute() else folder / line
        entry = known.get(path.name)
        if entry is None:
            problems.append(f"{path}: not in {folder / PLAN_FILE} (incomplete)")
        elif not path.exists():
            problems.append(f"{path}: missing")
        elif sha256_of(path) != entry["sha256"]:
            problems.append(f"{path}: checksum mismatch (corrupted or cut short); rerun `sslsv shards` to "
                            f"rewrite it")
    return problems


# ------------------------------------------------------------------------------------------------ reading


@dataclass
class Shard:
    path: Path
    count: int
    sha256: str
    bytes: int


class ShardSet:
    """The shards of a shard.list and their plan: stands in for the Manifest of the trainer (len, speaker_ids)."""

    def __init__(self, list_path: Path, shards: list[Shard], plan: dict, folder: Path):
        self.path, self.shards, self.plan, self.folder = list_path, shards, plan, folder
        self.speakers: list[str] = list(plan["speakers"])
        self.sample_rate = int(plan["sample_rate"])
        # position in the written shard stream -> manifest row and speaker index
        self.rows = np.load(folder / "rows.npy", mmap_mode="r")
        self.labels = np.load(folder / "labels.npy", mmap_mode="r")
        counts = np.array([s.count for s in shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]])  # first stream position of each shard
        self.counts = counts

    def __len__(self) -> int:
        return int(self.counts.sum())

    def speaker_ids(self) -> tuple[np.ndarray, list[str]]:
        return np.asarray(self.labels, dtype=np.int64), self.speakers


def open_shards(list_path: str | Path, sample_rate: int | None = None, key: str = "dataset.shards") -> ShardSet:
    """Read a shard.list and the shards.json next to it; ManifestError (one line naming `key` and the file) when
    either is missing, unreadable, names a shard the plan does not know, or a shard's size differs from the plan's
    (checksums are verified by `sslsv shards --verify`, not at every start)."""
    list_path = Path(list_path)
    folder = list_path.parent
    plan_path = folder / PLAN_FILE
    for needed in (list_path, plan_path, folder / "rows.npy", folder / "labels.npy"):
        if not needed.exists():
            raise ManifestError(f"{key}: {needed} does not exist (write shards with `sslsv shards MANIFEST -o DIR`)")
    try:
        plan = json.loads(plan_path.read_text())
    except ValueError as error:
        raise ManifestError(f"{key}: {plan_path} is not valid JSON ({error})") from None
    if plan.get("format") != SHARD_FORMAT:
        raise ManifestError(f"{key}: {plan_path} is not a {SHARD_FORMAT} plan")
    known = {e["name"]: e for e in plan.get("shards", []) if e}
    shards = []
    for number, line in enumerate(list_path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        path = Path(line) if Path(line).is_absolute() else folder / line
        entry = known.get(path.name)
        if entry is None:
            raise ManifestError(f"{key}: {list_path}, line {number}: {path.name} is not a complete shard of "
                                f"{plan_path} (rerun `sslsv shards` to finish writing)")
        if not path.exists():
            path = folder / path.name  # the folder was moved: the shards are next to the list
        if not path.exists() or path.stat().st_size != entry["bytes"]:
            raise ManifestError(f"{key}: {list_path}, line {number}: {path} is missing or its size differs from "
                                f"{plan_path} (rerun `sslsv shards` to rewrite it)")
        shards.append(Shard(path, int(entry["count"]), entry["sha256"], int(entry["bytes"])))
    if not shards:
        raise ManifestError(f"{key}: {list_path} lists no shard")
    if sample_rate is not None and int(plan["sample_rate"]) != sample_rate:
        raise ManifestError(f"{key}: {list_path} holds audio at {plan['sample_rate']} Hz but features.sample_rate "
                            f"is {sample_rate}; write the shards again with --sample-rate {sample_rate}")
    return ShardSet(list_path, shards, plan, folder)


def shuffle_buffer_order(n: int, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """The output order of a shuffle buffer of `buffer` items over inputs 0..n-1 (fill, then each new input takes
    the place of a random buffered one, which is output; the rest in random order at the end). Computed from
    indices only: a reader can skip the first k outputs without reading them. Every item leaves the buffer at most
    `buffer` inputs after it entered."""
    out = np.empty(n, dtype=np.int64)
    held = list(range(min(buffer, n)))
    draws = rng.integers(0, max(len(held), 1), size=max(n - len(held), 0))
    k = 0
    for new in range(len(held), n):
        j = int(draws[new - len(held)])
        out[k], held[j] = held[j], new
        k += 1
    out[k:] = rng.permutation(np.asarray(held, dtype=np.int64))
    return out


def _decode(data: bytes, sample_rate: int, where: str) -> np.ndarray:
    try:
        audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except (RuntimeError, sf.LibsndfileError) as error:
        raise AudioError(f"{where}: unreadable WAV member ({error})", path=where) from None
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if len(audio) == 0:
        raise AudioError(f"{where}: empty WAV member", path=where, kind="empty")
    return resample(np.ascontiguousarray(audio, dtype=np.float32), rate, sample_rate)


class ShardStream(IterableDataset):
    """Training samples streamed from shards (module docstring): also the trainer's "sampler" (set_epoch, steps)."""

    def __init__(self, shards: ShardSet, views: list[ViewGroup], sample_rate: int, global_batch: int, seed: int,
                 augmentation: AugmentationSources | None = None, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, max_steps: int | None = None, buffer: int = DEFAULT_BUFFER):
        self.shards = shards
        self.views = view_specs(views, sample_rate)
        self.sample_rate, self.seed, self.augmentation = sample_rate, seed, augmentation
        self.rank, self.world_size = rank, world_size
        # the batch rules of the file dataset (divisible by the ranks, at most the corpus, full batches only)
        rules = EpochBatchSampler(len(shards), global_batch, seed, rank, world_size, max_steps)
        self.global_batch, self.local_batch, self.steps = global_batch, rules.local_batch, rules.steps
        self.readers = max(1, num_workers)  # one contiguous range per DataLoader worker (or the main process)
        self.buffer = buffer
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:  # samples this rank yields this epoch (DataLoader's len of an IterableDataset)
        return (self.steps - self.start_step) * self.local_batch

    # -------------------------------------------------------------------------------- plan of an epoch

    def epoch_shard_order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch, 2]).permutation(len(self.shards.shards))

    def ranges(self) -> list[list[tuple[int, int]]]:
        """[rank][reader] -> (first, end) positions in the epoch's shard stream (all ranks, all readers)."""
        out, position = [], 0
        for _ in range(self.world_size):
            row = []
            for reader in range(self.readers):
                size = len(range(reader, self.steps, self.readers)) * self.local_batch
                row.append((position, position + size))
                position += size
            out.append(row)
        return out

    def reader_plan(self, worker: int) -> tuple[int, int, int, np.ndarray]:
        """What DataLoader worker `worker` of this rank yields from `start_step` on: (reader range index, first,
        end, the positions in the range it yields, in order). Batch b of the epoch comes from range b % readers
        (its (b // readers)-th batch); the DataLoader takes batches from workers in turn starting at worker 0, so
        after a resume at step S worker w serves range (S + w) % readers."""
        reader = (self.start_step + worker) % self.readers
        first, end = self.ranges()[self.rank][reader]
        rng = np.random.default_rng([self.seed, self.epoch, 3, self.rank, reader])
        order = shuffle_buffer_order(end - first, self.buffer, rng)
        done = len(range(reader, self.start_step, self.readers)) * self.local_batch
        return reader, first, end, order[done:]

    def sample_seed(self) -> int:
        """The epoch's per-sample seed, as EpochBatchSampler draws it."""
        return int(np.random.default_rng([self.seed, self.epoch, 1]).integers(2**62))

    # -------------------------------------------------------------------------------- reading

    def _members(self, first: int, end: int) -> Iterator[tuple[int, int, Callable[[], tuple[str, bytes]]]]:
        """(range position, shard stream position, read) for positions [first, end) of the epoch's shard stream,
        reading shards in order; read() returns (where: 'shard:key.wav', wav bytes)."""
        order = self.epoch_shard_order()
        counts = self.shards.counts[order]
        ends = np.cumsum(counts)
        index = int(np.searchsorted(ends, first, side="right"))
        position = first
        while position < end and index < len(order):
            number = int(order[index])
            shard = self.shards.shards[number]
            skip = position - int(ends[index] - counts[index])  # utterances of this shard before the range
            take = min(end - position, shard.count - skip)
            yield from self._read_shard(shard, int(self.shards.starts[number]), skip, take, position - first)
            position += take
            index += 1

    def _read_shard(self, shard: Shard, base: int, skip: int, take: int, offset: int):
        try:
            with tarfile.open(shard.path, mode="r:") as tar:
                index, current = -1, None
                for member in tar:  # headers only: the data of members not extracted is seeked over
                    key, _, suffix = member.name.rpartition(".")
                    if key != current:
                        current, index = key, index + 1
                    if index >= skip + take:
                        return
                    if index < skip or suffix != "wav":
                        continue
                    yield (offset + index - skip, base + index,
                           lambda member=member, key=key: (f"{shard.path}:{key}.wav", tar.extractfile(member).read()))
        except (tarfile.TarError, OSError, EOFError) as error:
            raise ManifestError(f"{shard.path}: unreadable shard ({error}); `sslsv shards --verify` checks every "
                                f"shard and rerunning `sslsv shards` rewrites it") from None

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if self.readers > 1 and info is None:
            raise RuntimeError("ShardStream with several readers must run in DataLoader workers")
        _, first, end, wanted = self.reader_plan(worker)
        if len(wanted) == 0:
            return
        # Read the range sequentially, hold what is read until its turn in the shuffle order (at most ~buffer items)
        needed = np.zeros(end - first, dtype=bool)
        needed[wanted] = True
        held: dict[int, tuple[int, Callable]] = {}
        cursor, seed = 0, self.sample_seed()
        for local, position, read in self._members(first, end):
            if not needed[local]:
                continue
            held[local] = (position, read())
            while cursor < len(wanted) and int(wanted[cursor]) in held:
                position, (where, data) = held.pop(int(wanted[cursor]))
                cursor += 1
                yield self._sample(position, data, where, seed)
        if cursor < len(wanted):
            raise ManifestError(f"{self.shards.path}: the shards hold fewer utterances than shards.json says "
                                f"(`sslsv shards --verify`)")

    def _sample(self, position: int, data: bytes, where: str, seed: int) -> dict:
        """The file dataset's sample of this utterance's manifest row (same generator, same draws)."""
        row = int(self.shards.rows[position])
        audio = _decode(data, self.sample_rate, where)
        rng = np.random.default_rng([seed, row])
        waves, plans = draw_views(lambda view, num_samples: crop_waveform(audio, num_samples, rng), self.views,
                                  self.augmentation, rng)
        if not all(np.isfinite(wave).all() for wave in waves):
            raise AudioError(f"{where}: NaN/Inf samples", path=where, kind="non_finite")
        return {"views": waves, "plans": plans, "label": int(self.shards.labels[position]), "index": row}
