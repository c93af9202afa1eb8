"""The run directory: every file name a run writes, and the one place that writes, finds, reads and loads them.

    <run>/config.yml                               the resolved config, written when training starts
    <run>/train.lock                               who is training into the run now (pid, host, start time)
    <run>/checkpoints/checkpoint_eEEEE_sSSSSSSSS.pt resumable states (method, optimiser, RNG, position, config)
    <run>/checkpoints/weights_eEEEE.pt             embedding-model weights after each epoch (the last few are kept)
    <run>/model.pt                                 final weights; model_avg.pt: mean of the last epochs' weights;
    <run>/model_best.pt                            weights of the best validation score
    <run>/metrics.jsonl, tensorboard/, training_summary.json
    <run>/results.json, scores/<name>.score                evaluation metrics and score files (sslsv evaluate)
    <run>/det_<name>.png, hist_<name>.png                  DET curves and score histograms of an evaluation
    <run>/fusion/, pseudo_labels/, projection_<name>.png   sslsv fuse, sslsv pseudo-label, sslsv analyze outputs
    <run>/embedding_cache/                                 embeddings reused across commands (evaluation.embeddings)

Nothing else in the package spells these names: code asks a `RunLayout` for a path. Every write goes through
`atomic_save`, so a kill or a full disk never leaves a half-written file in place of a good one, and a state with
NaN/Inf can be refused before anything is written (`require_finite`).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
import yaml

from sslsv.config import Config, ConfigError, build_config, flatten_dict
from sslsv.encoders.base import SpeakerModel, build_speaker_model, saved_weights_follow

CHECKPOINT_PATTERN = re.compile(r"checkpoint_e(\d+)_s(\d+)\.pt$")
WEIGHTS_PATTERN = re.compile(r"weights_e(\d+)\.pt$")
# atomic_save's temporaries: mkstemp(prefix=".<name>.", suffix=".tmp") adds 8 random characters
TEMPORARY_PATTERN = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")
# The config sections that decide the embedding model and its input features: evaluation refuses weights trained
# with other values. Every other section (evaluation, trainer, dataset, ...) may be edited after training.
MODEL_SECTIONS = ("encoder", "features")
NON_FINITE_LIMIT = 5  # tensors named in a non-finite refusal


class RunError(RuntimeError):
    """A run directory or run file that cannot be used, with the reason."""


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run directory."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / "config.yml"

    @property
    def lock(self) -> Path:
        return self.root / "train.lock"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    @property
    def model_average(self) -> Path:
        return self.root / "model_avg.pt"

    @property
    def model_best(self) -> Path:
        return self.root / "model_best.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def summary(self) -> Path:
        return self.root / "training_summary.json"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def scores(self) -> Path:
        return self.root / "scores"

    def score_file(self, name: str) -> Path:
        """Score file of one evaluated system, e.g. name demo_asnorm."""
        return self.scores / f"{name}.score"

    def det_plot(self, name: str) -> Path:
        return self.root / f"det_{name}.png"

    def histogram_plot(self, name: str) -> Path:
        return self.root / f"hist_{name}.png"

    def projection_plot(self, name: str) -> Path:
        return self.root / f"projection_{name}.png"

    @property
    def fusion(self) -> Path:
        """Default output folder of sslsv fuse."""
        return self.root / "fusion"

    @property
    def pseudo_labels(self) -> Path:
        """Default output folder of sslsv pseudo-label."""
        return self.root / "pseudo_labels"

    @property
    def embedding_cache(self) -> Path:
        """Folder of the embedding cache (sslsv.evaluation.embeddings.embedding_cache)."""
        return self.root / "embedding_cache"

    def checkpoint(self, epoch: int, step: int) -> Path:
        return self.checkpoints / f"checkpoint_e{epoch:04d}_s{step:08d}.pt"

    def epoch_weights(self, epoch: int) -> Path:
        """Weights after epoch `epoch` (1-based)."""
        return self.checkpoints / f"weights_e{epoch:04d}.pt"

    def list_checkpoints(self) -> list[Path]:
        return list_checkpoints(self.checkpoints)

    def list_epoch_weights(self) -> list[Path]:
        return list_epoch_weights(self.checkpoints)

    def check(self) -> None:
        """Raise RunError when the run directory's path names something that is not a directory."""
        if self.root.exists() and not self.root.is_dir():
            raise RunError(f"{self.root} is a file, not a run directory; give run_dir a folder path")


# ------------------------------------------------------------------------------------------------ files


def atomic_save(obj, path: str | Path, require_finite: bool = False) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`.

    require_finite: refuse (RunError naming the tensors) when a floating tensor of `obj` holds NaN/Inf; nothing is
    written. A full disk is a RunError naming the folder and the space needed; `path` keeps its previous content."""
    path = Path(path)
    if require_finite:
        bad = non_finite_entries(obj, limit=NON_FINITE_LIMIT + 1)
        if bad:
            raise RunError(f"refusing to write {path}: non-finite values (NaN/Inf) in "
                           f"{', '.join(bad[:NON_FINITE_LIMIT])}{' ...' if len(bad) > NON_FINITE_LIMIT else ''}; "
                           f"{_previous(path)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if _is_disk_full(error):
            raise RunError(_disk_full_message(path, _tensor_bytes(obj))) from None
        raise


def _previous(path: Path) -> str:
    return f"the previous {path.name} is untouched" if path.exists() else "nothing was written"


def _is_disk_full(error: BaseException | None) -> bool:
    """Whether `error`, or an error it was raised from, is "no space left" or "quota exceeded"."""
    for _ in range(10):  # bounded: a chain can loop back on itself
        if error is None:
            return False
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False


def _disk_full_message(path: Path, needed_bytes: int) -> str:
    free = shutil.disk_usage(path.parent).free
    return (f"{path.parent}: disk full while writing {path.name} ({needed_bytes / 1e6:.1f} MB needed, "
            f"{free / 1e6:.1f} MB free); free space or set run_dir elsewhere; {_previous(path)}")


def _tensors(obj, prefix: str = ""):
    """(dotted name, tensor) for every tensor in nested dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield from _tensors(value, f"{prefix}.{index}" if prefix else str(index))


def _tensor_bytes(obj) -> int:
    return sum(t.numel() * t.element_size() for _, t in _tensors(obj))



def non_finite_entries(state, limit: int = NON_FINITE_LIMIT) -> list[str]:
    """Dotted names (e.g. "method.encoder.bn1.running_var") of the first `limit` floating tensors of a nested
    dict/list/tuple that hold NaN or Inf. One fused max-abs per device and dtype, one device sync per group."""
    groups: dict[tuple, list[tuple[str, torch.Tensor]]] = {}
    for name, tensor in _tensors(state):
        if (tensor.is_floating_point() or tensor.is_complex()) and tensor.numel() > 0:
            groups.setdefault((tensor.device, tensor.dtype), []).append((name, tensor.detach()))
    bad = []
    for entries in groups.values():
        # the infinity norm (max |x|) is NaN/Inf exactly when some element is, and cannot overflow
        norms = torch._foreach_norm([t for _, t in entries], float("inf"))
        finite = torch.stack(norms).isfinite().tolist()
        bad += [name for (name, _), ok in zip(entries, finite) if not ok]
    return bad[:limit]


def remove_stale_temporaries(root: str | Path) -> list[Path]:
    """Delete the temporaries that atomic_save leaves when the process is killed mid-write (in the run folder and
    its checkpoints/). Call it only while holding the run's RunLock: a live writer's temporary looks the same."""
    layout = RunLayout(root)
    removed = []
    for folder in (layout.root, layout.checkpoints):
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if TEMPORARY_PATTERN.match(path.name) and path.is_file():
                    path.unlink(missing_ok=True)
                    removed.append(path)
    return removed


# ------------------------------------------------------------------------------------------------ checkpoints


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Resumable checkpoints in `folder`, oldest first (ordered by global step)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(2)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.search(p.name))]
    return [p for _, p in sorted(found)]


def list_epoch_weights(folder: str | Path) -> list[Path]:
    """Per-epoch weight files in `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := WEIGHTS_PATTERN.search(p.name))]
    return [p for _, p in sorted(found)]


def is_resumable_checkpoint(path: str | Path) -> bool:
    return CHECKPOINT_PATTERN.search(Path(path).name) is not None


def prune(paths: list[Path], keep: int) -> None:
    """Delete all but the `keep` last of `paths`; the last (newest) one is always kept."""
    for path in paths[: max(len(paths) - max(keep, 1), 0)]:
        path.unlink(missing_ok=True)


def _reason(error: BaseException) -> str:
    """The first line of an error message (torch's load errors run over several lines)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_checkpoint(path: str | Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - name the file whatever went wrong
        raise RunError(f"cannot read checkpoint {path}: {_reason(error)}") from None


def _newest_readable(paths: list[Path], read: Callable[[Path], dict], using: str,
                     warn: Callable[[str], object]) -> tuple[Path, dict] | None:
    """The newest of `paths` that `read` accepts, with one warning per newer unreadable file; None when there are
    no paths; RunError naming them all when none is readable."""
    unreadable = []
    for path in reversed(paths):
        try:
            state = read(path)
        except Exception as error:  # noqa: BLE001 - a damaged file can fail in many ways; each is named
            unreadable.append((path, _reason(error)))
            continue
        for bad, reason in unreadable:
            warn(f"warning: {bad} is unreadable ({reason}); {using} {path}")
        return path, state
    if unreadable:
        raise RunError("every checkpoint is unreadable: " + "; ".join(f"{p} ({r})" for p, r in unreadable)
                       + "; delete them to start the run afresh (or pass --restart)")
    return None


def latest_intact_checkpoint(layout: RunLayout, warn: Callable[[str], object] = print) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads, and its state. A corrupt newer one (a kill or a full disk during a copy,
    a damaged file system) gives one warning line naming it. None when the run has no checkpoint."""
    def read(path: Path) -> dict:
        return torch.load(path, map_location="cpu", weights_only=False)

    return _newest_readable(layout.list_checkpoints(), read, "resuming from", warn)


# ------------------------------------------------------------------------------------------------ lock


class RunLock:
    """One training per run directory: `<run>/train.lock` names the process that trains into it.

    acquire() creates the file atomically (O_CREAT|O_EXCL) with {pid, host, started, argv}. A lock held by a live
    process is a RunError naming it; a lock left by a process of this host that is gone (killed, or its PID now
    belongs to another program) is taken over with a message; a lock from another host is refused, since its
    process cannot be checked from here. Usable as `with RunLock(run_dir): ...`; under torchrun rank 0 holds it."""

    def __init__(self, root: str | Path):
        self.layout = RunLayout(root)
        self.path = self.layout.lock
        self._content: bytes | None = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def acquire(self) -> RunLock:
        self.layout.check()
        self.layout.root.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if self._create():
                return self
            holder = self._read_holder()
            if holder is not None:  # None: the lock went away meanwhile; try again
                self._refuse_or_remove(holder)
        raise RunError(f"{self.path}: could not take the lock: other processes keep creating it; "
                       f"wait for them or train into another run_dir")

    def release(self) -> None:
        """Remove the lock file if it is still the one this object wrote."""
        if self._content is None:
            return
        try:
            if self.path.read_bytes() == self._content:
                self.path.unlink()
        except FileNotFoundError:
            pass
        self._content = None

    def _create(self) -> bool:
        content = json.dumps({"pid": os.getpid(), "pid_start": _process_start(os.getpid()),
                              "host": socket.gethostname(),
                              "started": datetime.now().astimezone().isoformat(timespec="seconds"),
                              "argv": sys.argv}).encode()
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
        except OSError as error:
            self.path.unlink(missing_ok=True)
            if _is_disk_full(error):
                raise RunError(_disk_full_message(self.path, len(content))) from None
            raise RunError(f"cannot write {self.path}: {error.strerror}") from None
        self._content = content
        return True

    def _read_holder(self) -> dict | None:
        """The lock's content; {} when it stays unreadable (a process killed between creating and writing it)."""
        for _ in range(10):  # the holder may be between creating the file and writing it
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                return None
            try:
                holder = json.loads(raw)
                if isinstance(holder, dict):
                    return {**holder, "raw": raw}
            except ValueError:
                pass
            time.sleep(0.1)
        return {"raw": raw}

    def _refuse_or_remove(self, holder: dict) -> None:
        pid, host, since = holder.get("pid"), holder.get("host"), holder.get("started", "an unknown time")
        root = self.layout.root
        if "pid" not in holder:
            print(f"{root}: taking over the unreadable lock {self.path}")
        elif host != socket.gethostname():
            raise RunError(f"{root} is in use by another training (pid {pid} on host {host} since {since}); "
                           f"if that process is gone, delete {self.path} and start again")
        elif _process_alive(pid, holder.get("pid_start")):
            raise RunError(f"{root} is in use by another training (pid {pid} on host {host} since {since}); "
                           f"wait for it or train into another run_dir")
        else:
            print(f"{root}: taking over the lock of pid {pid} (started {since}), which is no longer running")
        try:
            # re-read just before removing: another process may have taken the stale lock over meanwhile
            if self.path.read_bytes() == holder["raw"]:
                self.path.unlink()
        except FileNotFoundError:
            pass


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a live holder from a reused PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _process_alive(pid, start: int | None) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
    current = _process_start(pid)
    return start is None or current is None or current == start


# ------------------------------------------------------------------------------------------------ runs


def latest_run(models_dir: str | Path = "models") -> Path:
    """The most recently trained run under `models_dir` (by the time of its newest weights)."""
    candidates = []
    for config in Path(models_dir).rglob(RunLayout(".").config.name):
        run = RunLayout(config.parent)
        weights = [p for p in (run.model_average, run.model) if p.exists()] + run.list_epoch_weights()
        if weights:
            candidates.append((max(p.stat().st_mtime for p in weights), run.root))
    if not candidates:
        raise RunError(f"no trained run found under {models_dir}/ (train one with: python train.py CONFIG)")
    return max(candidates)[1]


def is_run_dir(path: str | Path) -> bool:
    return RunLayout(path).config.is_file()


def load_run_config(run_dir: str | Path) -> Config:
    layout = RunLayout(run_dir)
    layout.check()
    path = layout.config
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run directory: {path} is missing")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or _reason(error)
        raise RunError(f"{path}: invalid YAML at {where}{problem}; fix it or restore the file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RunError(f"cannot read {path}: {_reason(error)}") from None
    if not isinstance(raw, dict):
        raise RunError(f"{path} is not a run config (expected a mapping of sections, found {type(raw).__name__})")
    try:
        return build_config(raw)
    except ConfigError as error:
        raise RunError(f"{path}: {error}") from None


def run_weights(run_dir: str | Path, use_average: bool = True, best: bool = False) -> Path:
    """The weights to use: model_best.pt (best: the best validation score, saved by the trainer), else
    model_avg.pt (use_average), model.pt, or the newest epoch's weights."""
    run = RunLayout(run_dir)
    run.check()
    if best:
        if not run.model_best.exists():
            raise RunError(f"{run.model_best} is missing: the trainer saves it at each validation that "
                           f"improves trainer.tracked_metric (set trainer.validation_trials and validate_every)")
        return run.model_best
    for path in ([run.model_average] if use_average else []) + [run.model]:
        if path.exists():
            return path
    epochs = run.list_epoch_weights()
    if epochs:
        return epochs[-1]
    raise RunError(f"{run_dir} has no weights yet ({run.model_average.name}, {run.model.name} or "
                   f"{run.checkpoints.name}/weights_e*.pt)")


def weights_name(path: str | Path) -> str:
    """Which weights a file is, for output names: avg (model_avg.pt), best (model_best.pt), last (model.pt or an
    epoch's weights_eNNNN.pt), or the file's stem for any other file."""
    name = Path(path).name
    layout = RunLayout(".")
    if name == layout.model_average.name:
        return "avg"
    if name == layout.model_best.name:
        return "best"
    if name == layout.model.name or WEIGHTS_PATTERN.search(name):
        return "last"
    return Path(path).stem


def read_weights(path: str | Path) -> dict:
    """A weights file's state dict (names to tensors), with a RunError naming the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path} is missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - truncated, overwritten or foreign: name the file
        raise RunError(f"{path} is corrupt or not a weights file ({_reason(error)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RunError(f"{path} is corrupt or not a weights file (it holds a {type(state).__name__} that is not a "
                       f"state dict of tensors)")
    return state


def load_weights(model: torch.nn.Module, path: str | Path, what: str = "the run's encoder") -> None:
    """Load a state dict file into `model` strictly, with an error naming the file when they do not match."""
    state = read_weights(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise RunError(f"{path} does not match {what}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    mismatched = [f"{k} {tuple(state[k].shape)} in the file vs {tuple(v.shape)} in the model"
                  for k, v in expected.items() if state[k].shape != v.shape]
    if mismatched:
        raise RunError(f"{path} does not match {what}: {'; '.join(mismatched[:3])}"
                       f"{f' (and {len(mismatched) - 3} more)' if len(mismatched) > 3 else ''}")
    model.load_state_dict(state, strict=True)


def average_state_dicts(paths: list[Path]) -> dict:
    """Element-wise mean of floating-point tensors (parameters and BN statistics); integer buffers from the last."""
    states = [read_weights(p) for p in paths]
    out = {}
    for key, last in states[-1].items():
        if torch.is_floating_point(last):
            out[key] = sum(s[key].double() for s in states).div(len(states)).to(last.dtype)
        else:
            out[key] = last.clone()
    return out




def _model_settings(config: dict) -> dict:
    """The flattened model-deciding keys of a config dict, defaults filled in (when the dict still builds)."""
    try:
        config = build_config(config).to_dict()
    except (ConfigError, TypeError, ValueError):
        pass  # a config from an older sslsv: compare what it holds
    return flatten_dict({section: config.get(section, {}) for section in MODEL_SECTIONS})


def check_trained_config(run_dir: str | Path, config: Config, warn: Callable[[str], object] = print) -> None:
    """Refuse (RunError naming the keys) when `config` (the run's config.yml) differs from the config stored in the
    run's newest readable checkpoint on a key that changes the model or its features (MODEL_SECTIONS). A run without
    checkpoints has nothing to compare with: its config.yml is used as it is."""
    layout = RunLayout(run_dir)

    def read_config(path: Path) -> dict:  # mmap: the config is in the pickle; the tensors are not read
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("config") or {}

    try:
        found = _newest_readable(layout.list_checkpoints(), read_config, "comparing config.yml with", warn)
    except RunError as error:
        warn(f"warning: cannot compare {layout.config} with the trained config: {error}")
        return
    if found is None or not found[1]:  # no checkpoint, or one from before checkpoints carried the config
        return
    checkpoint, saved = found
    trained, current = _model_settings(saved), _model_settings(config.to_dict())
    changed = sorted(k for k in trained.keys() | current.keys() if trained.get(k) != current.get(k))
    if changed:
        shown = ", ".join(f"{k} {json.dumps(trained.get(k))} (trained) vs {json.dumps(current.get(k))} (config.yml)"
                          for k in changed[:5])
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        raise RunError(f"{layout.config} was edited after training: {shown}{more}; restore the trained values "
                       f"(stored in {checkpoint}) or train a new run with the new ones")


def load_model(run_dir: str | Path, use_average: bool = True, device: str | torch.device = "cpu",
               random_weights: bool = False, best: bool = False) -> tuple[SpeakerModel, Config, str]:
    """The run's embedding model in eval mode, its config, and which weights were loaded. The model is built from
    config.yml after checking it against the config stored in the run's checkpoints (check_trained_config)."""
    config = load_run_config(run_dir)
    torch.manual_seed(config.trainer.seed)  # the random-weights baseline is the run's own initialisation
    # the saved weights replace any pretrained ones (no download or checkpoint file needed to reload a run)
    with contextlib.nullcontext() if random_weights else saved_weights_follow():
        model = build_speaker_model(config.encoder, config.features)
    source = "random weights"
    if not random_weights:
        path = run_weights(run_dir, use_average, best)
        check_trained_config(run_dir, config)
        load_weights(model, path, f"the model built from {RunLayout(run_dir).config}")
        source = str(path)
    return model.to(device).eval(), config, source
