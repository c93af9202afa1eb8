"""Training dataset, sampler and collation: workers read crops and augmentation sources, nothing else.

Determinism: every random choice for a sample (crop positions, augmentation draws) comes from a generator seeded
by (run seed, epoch, manifest row), and the batch order from (run seed, epoch). So a batch's content does not
depend on the number of workers, on the number of ranks sharing it, or on whether the run was resumed.

The review: T. Lepage, R. Dehak, "Self-Supervised Learning for Speaker Recognition: A study and review",
2026, arXiv:2602.10829 (docs/references.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from sslsv.audio.augment import AugmentationSources
from sslsv.audio.io import AudioError, read_crop
from sslsv.config import ViewGroup
from sslsv.data.manifest import Manifest


@dataclass
class ViewSpec:
    num_samples: int


def view_specs(groups: list[ViewGroup], sample_rate: int) -> list[ViewSpec]:
    return [ViewSpec(int(round(g.seconds * sample_rate))) for g in groups for _ in range(g.count)]


class TrainDataset(Dataset):
    """Item (row, seed) -> views of manifest row `row` (independent crops, any lengths) + augmentation plans.

    positive_sampling "same_utterance": all views are crops of the same file (the SSL default).
    positive_sampling "supervised": view 0 comes from the file, every other view from a different recording of
    the same speaker when there is one (review, Table 11; analysis only, it uses labels).
    """

    def __init__(
        self,
        manifest: Manifest,
        data_root: str | Path,
        views: list[ViewGroup],
        sample_rate: int,
        augmentation: AugmentationSources | None = None,
        positive_sampling: str = "same_utterance",
    ):
        self.manifest = manifest
        self.data_root = Path(data_root)
        self.views = view_specs(views, sample_rate)
        self.sample_rate = sample_rate
        self.augmentation = augmentation
        self.labels, self.speakers = manifest.speaker_ids()
        self.positive_sampling = positive_sampling
        if positive_sampling == "supervised":
            sessions = manifest.sessions or [Path(f).parent.name for f in manifest.files]
            self._by_speaker: dict[int, np.ndarray] = {}
            order = np.argsort(self.labels, kind="stable")
            bounds = np.flatnonzero(np.diff(self.labels[order])) + 1
            for group in np.split(order, bounds):
                self._by_speaker[int(self.labels[group[0]])] = group
            self._sessions = np.asarray(sessions)

    def __len__(self) -> int:
        return len(self.manifest)

    def _positive_row(self, row: int, rng: np.random.Generator) -> int:
        rows = self._by_speaker[int(self.labels[row])]
        other = rows[self._sessions[rows] != self._sessions[row]]
        if len(other) == 0:
            other = rows[rows != row] if len(rows) > 1 else rows
        return int(rng.choice(other))

    def _crop(self, row: int, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        """A crop of manifest row `row`; a file that cannot be used (it may have changed since the check at the
        start: NaN samples, truncated, deleted) stops training with the file and its manifest line."""
        path = self.data_root / self.manifest.files[row]
        try:
            return read_crop(path, num_samples, self.sample_rate, rng)
        except AudioError as error:
            where = f"{self.manifest.path}, line {self.manifest.line_of(row)}"
            raise AudioError(f"{error} ({where}; `sslsv check-manifest --deep` lists every such file)",
                             path=error.path, kind=error.kind, reason=error.reason) from None

    def __getitem__(self, key: tuple[int, int]) -> dict:
        row, seed = key
        rng = np.random.default_rng([seed, row])

        def crop(view: int, num_samples: int) -> np.ndarray:
            source = row
            if self.positive_sampling == "supervised" and view > 0:
                source = self._positive_row(row, rng)
            return self._crop(source, num_samples, rng)

        waves, plans = draw_views(crop, self.views, self.augmentation, rng)
        return {"views": waves, "plans": plans, "label": int(self.labels[row]), "index": row}


def draw_views(crop: Callable[[int, int], np.ndarray], views: list[ViewSpec],
               augmentation: AugmentationSources | None, rng: np.random.Generator) -> tuple[list, list]:
    """The views of one sample and their augmentation plans, in the order every dataset draws them from the
    sample's generator `rng`: for each view, its crop (`crop(view, num_samples)`, which draws from `rng`), then its
    plan. The file dataset and the shard stream (sslsv.data.shards) both build samples here."""
    waves, plans = [], []
    for v, spec in enumerate(views):
        waves.append(crop(v, spec.num_samples))
        if augmentation is not None:
            plans.append(augmentation.draw(rng, spec.num_samples))
    return waves, plans


def collate(items: list[dict]) -> dict:
    """Stack per view position: views -> list of (B, S_v); plans -> list of dicts of (B, ...) tensors."""
    num_views = len(items[0]["views"])
    views = [torch.from_numpy(np.stack([item["views"][v] for item in items])) for v in range(num_views)]
    plans = []
    if items[0]["plans"]:
        for v in range(num_views):
            keys = items[0]["plans"][v].keys()
            plans.append({k: torch.from_numpy(np.stack([np.asarray(item["plans"][v][k]) for item in items])) for k in keys})
    return {
        "views": views,
        "plans": plans,
        "labels": torch.tensor([item["label"] for item in items], dtype=torch.long),
        "indices": torch.tensor([item["index"] for item in items], dtype=torch.long),
    }


class EpochBatchSampler(Sampler):
    """Yields this rank's share of each global batch as (row, sample_seed) keys; full batches only.

    The permutation depends on (seed, epoch) only; rank r takes rows [r*b, (r+1)*b) of every global batch of
    b*world rows. `start_step` skips already-trained batches when resuming mid-epoch, without reading them.
    """

    def __init__(self, num_samples: int, global_batch: int, seed: int, rank: int = 0, world_size: int = 1,
                 max_steps: int | None = None):
        if global_batch % world_size:
            raise ValueError(f"dataset.batch_size={global_batch} is not divisible by the {world_size} processes")
        if num_samples < global_batch:
            raise ValueError(f"dataset.batch_size={global_batch} is larger than the manifest ({num_samples} utterances)")
        self.num_samples, self.global_batch, self.seed = num_samples, global_batch, seed
        self.rank, self.world_size = rank, world_size
        self.local_batch = global_batch // world_size
        self.steps = num_samples // global_batch
        if max_steps is not None:
            self.steps = min(self.steps, max_steps)
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return self.steps - self.start_step

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_samples)
        sample_seed = int(np.random.default_rng([self.seed, self.epoch, 1]).integers(2**62))
        for step in range(self.start_step, self.steps):
            start = step * self.global_batch + self.rank * self.local_batch
            rows = order[start : start + self.local_batch]
            yield [(int(r), sample_seed) for r in rows]
