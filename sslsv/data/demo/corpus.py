"""Building a demo corpus: the worker pool, the manifests and trial lists, corpus.json and the completeness check."""
from __future__ import annotations

import csv
import json
import multiprocessing as mp
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from sslsv.data.demo.config import KIND_TRIALS, DemoCorpusConfig, content_key, seeded_rng
from sslsv.data.demo.recordings import initialise_worker, run_task
from sslsv.data.demo.signal import SAMPLE_RATE
from sslsv.data.demo.voices import ROLES, speaker_params
from sslsv.data.manifest import Manifest, write_manifest
from sslsv.data.trials import Trials, write_trials

FORMAT_VERSION = 1
MANIFESTS = ("train.csv", "val.csv", "test.csv")
TRIAL_LISTS = {"trials.txt": "test", "val_trials.txt": "val"}  # file -> role of its speakers
BUILDING_MARKER = ".building"  # present while a build runs, and after one was interrupted

Row = tuple[str, str, str, float]  # (file under wav/, speaker, session, seconds)


# ---------------------------------------------------------------------------------------------------------------------
# Layout and completeness
# ---------------------------------------------------------------------------------------------------------------------


def _expected_files(out_dir: Path, meta: dict) -> list[Path]:
    """Every file a finished build has: lists, manifests, the audio they name and the augmentation set."""
    files = [out_dir / name for name in (*MANIFESTS, *TRIAL_LISTS)]
    for name in MANIFESTS:
        if (out_dir / name).exists():
            # Plain CSV rather than read_manifest, which refuses the header-only manifest of a role with no speakers.
            with open(out_dir / name, newline="", encoding="utf-8") as handle:
                files += [out_dir.parent / row["File"] for row in csv.DictReader(handle)]
    files += [out_dir / p for p in meta.get("augmentation", [])]
    return files


def is_complete(out_dir: Path, config: DemoCorpusConfig) -> bool:
    """Whether out_dir holds a finished build of this config with every file present."""
    meta_path = out_dir / "corpus.json"
    if not meta_path.exists() or (out_dir / BUILDING_MARKER).exists():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        return False
    if meta.get("format_version") != FORMAT_VERSION or meta.get("config") != content_key(config):
        return False
    return all(path.exists() for path in _expected_files(out_dir, meta))


def _clear(out_dir: Path) -> None:
    """Remove a previous demo build (only what a build writes)."""
    for name in ("wav", "musan", "rirs"):
        if (out_dir / name).exists():
            shutil.rmtree(out_dir / name)
    for name in (*MANIFESTS, *TRIAL_LISTS, "corpus.json"):
        (out_dir / name).unlink(missing_ok=True)


def _prepare_folder(out_dir: Path) -> None:
    """Empty out_dir of an earlier build (refusing a folder that holds anything else) and mark the build started."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not ((out_dir / "corpus.json").exists() or (out_dir / BUILDING_MARKER).exists()):
            raise FileExistsError(f"{out_dir} is not empty and holds no demo corpus (corpus.json); not overwriting it")
        _clear(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / BUILDING_MARKER).write_text("a demo corpus build is in progress or was interrupted\n")
    for sub in ("musan/noise", "musan/music", "musan/speech", "rirs"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------------------------------------------------------------
# Trials and manifests
# ---------------------------------------------------------------------------------------------------------------------


def _target_pairs(by_speaker: dict[str, list[tuple[str, str]]]) -> list[tuple[str, str]]:
    """Same-speaker pairs from different sessions (from one session only when a speaker has no other)."""
    targets = []
    for items in by_speaker.values():
        cross = [(a, b) for i, (a, sa) in enumerate(items) for b, sb in items[i + 1 :] if sa != sb]
        targets += cross or [(a, b) for i, (a, _) in enumerate(items) for b, _ in items[i + 1 :]]
    return targets


def make_trials(rows: list[Row], seed: int, code: int, max_trials: int) -> Trials:
    """Half target, half non-target trials among `rows`, at most max_trials, sorted by (enroll, test)."""
    rng = seeded_rng(seed, KIND_TRIALS, code)
    by_speaker: dict[str, list[tuple[str, str]]] = {}
    for file, spk, ses, _ in rows:
        by_speaker.setdefault(spk, []).append((file, ses))
    targets = _target_pairs(by_speaker)
    half = max_trials // 2
    if len(targets) > half:
        targets = [targets[i] for i in sorted(rng.choice(len(targets), half, replace=False))]
    files = [(r[0], r[1]) for r in rows]
    nontargets: set[tuple[str, str]] = set()
    # Never ask for more non-target pairs than exist, or the loop below would not end.
    possible = len(files) * (len(files) - 1) // 2 - sum(len(v) * (len(v) - 1) // 2 for v in by_speaker.values())
    wanted = min(len(targets), possible)
    while len(nontargets) < wanted:
        i, j = rng.integers(0, len(files), 2)
        if files[i][1] != files[j][1]:
            nontargets.add((files[min(i, j)][0], files[max(i, j)][0]))
    trials = sorted([(a, b, 1) for a, b in targets] + [(a, b, 0) for a, b in nontargets], key=lambda t: (t[0], t[1]))
    return Trials([a for a, _, _ in trials], [b for _, b, _ in trials],
                  np.array([label for _, _, label in trials], dtype=np.int8), "")


def _manifest(rows: list[Row], prefix: str) -> Manifest:
    """Rows as a manifest whose files are relative to the data root (out_dir's parent)."""
    return Manifest(
        files=[f"{prefix}/wav/{file}" for file, _, _, _ in rows],
        speakers=[spk for _, spk, _, _ in rows],
        sessions=[ses for _, _, ses, _ in rows],
        durations=[seconds for _, _, _, seconds in rows],
        path="",
    )


# ---------------------------------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------------------------------


def _map(function, tasks: list, workers: int, progress: bool, label: str) -> list:
    """Run every task in a fresh process (maxtasksperchild=1), `workers` at a time.

    espeak-ng keeps state from one synthesis to the next (the output of a call depends on the calls before it, even
    after espeak_Terminate/espeak_Initialize), so a task only gives the same bytes if it starts from a fresh engine
    and makes its calls in a fixed order. Hence one process per task, also with workers=1.
    """
    results = []
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    with mp.get_context(method).Pool(max(1, workers), initializer=initialise_worker, maxtasksperchild=1) as pool:
        for i, result in enumerate(pool.imap(function, tasks)):
            results.append(result)
            if progress and (i + 1 == len(tasks) or (i + 1) % max(1, len(tasks) // 10) == 0):
                last = i + 1 == len(tasks)
                print(f"\r{label}: {i + 1}/{len(tasks)}", end="\n" if last else "", file=sys.stderr, flush=True)
    return results


def _session_tasks(out_dir: Path, config: DemoCorpusConfig, speakers: dict[str, list[dict]]) -> list[tuple]:
    return [
        (str(out_dir), config.to_json(), spk, ROLES[role][0], i, s)
        for role in ROLES
        for i, spk in enumerate(speakers[role])
        for s in range(config.sessions_per_speaker)
    ]


def _augmentation_tasks(out_dir: Path, config: DemoCorpusConfig) -> list[tuple]:
    counts = {
        "speech": config.musan_speech, "noise": config.musan_noise, "music": config.musan_music, "rir": config.rirs,
    }
    return [(str(out_dir), config.to_json(), kind, k) for kind, count in counts.items() for k in range(count)]


def _write_lists(out_dir: Path, rows_by_role: dict[str, list[Row]], config: DemoCorpusConfig) -> dict[str, int]:
    """Write the manifests and trial lists; return the number of trials of each list."""
    for role in ROLES:
        write_manifest(_manifest(rows_by_role[role], out_dir.name), out_dir / f"{role}.csv")
    trial_counts = {}
    for name, role in TRIAL_LISTS.items():
        trials = make_trials(rows_by_role[role], config.seed, ROLES[role][0], config.max_trials)
        write_trials(trials, out_dir / name)
        trial_counts[name] = len(trials)
    return trial_counts


def _metadata(config: DemoCorpusConfig, speakers: dict[str, list[dict]], rows_by_role: dict[str, list[Row]],
              trial_counts: dict[str, int], augmentation: list[str], seconds: float) -> dict:
    """The content of corpus.json."""
    return {
        "format_version": FORMAT_VERSION,
        "generator": "sslsv.data.demo (espeak-ng via espeakng-loader)",
        "sample_rate": SAMPLE_RATE,
        "config": content_key(config),
        "counts": {
            "speakers": {role: len(speakers[role]) for role in ROLES},
            "utterances": {role: len(rows) for role, rows in rows_by_role.items()},
            "seconds": {role: round(sum(r[3] for r in rows), 3) for role, rows in rows_by_role.items()},
            "trials": trial_counts,
        },
        "build_seconds": round(seconds, 2),
        "speakers": [spk for role in ROLES for spk in speakers[role]],
        "augmentation": augmentation,
    }


def build_demo_corpus(
    out_dir: str | Path = "data/demo", config: DemoCorpusConfig | None = None, progress: bool = True
) -> Path:
    """Build (or rebuild if corpus.json differs) and return out_dir.

    If corpus.json exists with the same config and all files exist, return immediately (idempotent). A folder that
    holds files but no corpus.json (so not a demo build) is refused rather than overwritten.
    """
    config = config or DemoCorpusConfig()
    out_dir = Path(out_dir)
    if is_complete(out_dir, config):
        return out_dir
    _prepare_folder(out_dir)
    start = time.time()
    counts = {"train": config.train_speakers, "val": config.val_speakers, "test": config.test_speakers}
    speakers = {role: [speaker_params(config.seed, role, i) for i in range(counts[role])] for role in ROLES}
    tasks = _session_tasks(out_dir, config, speakers)
    aug_tasks = _augmentation_tasks(out_dir, config)
    # One pool for both, sessions (the longest tasks) first.
    jobs = [("session", t) for t in tasks] + [("augmentation", t) for t in aug_tasks]
    results = _map(run_task, jobs, config.workers, progress, "demo corpus")
    augmentation = sorted(str(Path(p).relative_to(out_dir)) for p in results[len(tasks) :])
    rows_by_role: dict[str, list[Row]] = {role: [] for role in ROLES}
    role_of_code = {code: role for role, (code, _) in ROLES.items()}
    for task, rows in zip(tasks, results[: len(tasks)]):
        rows_by_role[role_of_code[task[3]]] += rows
    trial_counts = _write_lists(out_dir, rows_by_role, config)
    meta = _metadata(config, speakers, rows_by_role, trial_counts, augmentation, time.time() - start)
    (out_dir / "corpus.json").write_text(json.dumps(meta, indent=1) + "\n")
    (out_dir / BUILDING_MARKER).unlink()
    return out_dir
