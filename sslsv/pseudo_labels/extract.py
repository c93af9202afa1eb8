"""Representations of every training utterance, with a trained run's model: batched, resumable, sharded.

The manifest is cut into shards of `shard_size` consecutive rows. Each shard is written atomically to
`<out>/shard_XXXXX.npy` (a temporary file renamed into place), and an existing shard is never recomputed, so an
interrupted extraction resumes where it stopped. Under torchrun rank r computes shards r, r + W, r + 2W, ...; rank 0
then concatenates them into `<out>/embeddings.npy`, which every rank opens as a read-only memmap.

Full-length audio (the evaluation protocol, batched by length without padding) is the default; `crop_seconds`
embeds one fixed-length crop per utterance instead (deterministic: seeded by the row), which bounds the cost of
very long files.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sslsv.config import ConfigError
from sslsv.data.manifest import Manifest
from sslsv.training import distributed


@dataclass
class ExtractionConfig:
    shard_size: int = 50000  # utterances per shard file (the unit of resumption)
    crop_seconds: float | None = None  # None: full-length utterances
    batch_seconds: float = 300.0  # audio per batch for full-length extraction
    crop_batch_size: int = 128  # utterances per batch for fixed crops
    max_trim: float = 0.01
    use_average: bool = True  # the run's averaged weights when it has them
    device: str = "auto"
    num_workers: int = 2

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ConfigError("extraction.shard_size: must be at least 1")
        if self.crop_seconds is not None and self.crop_seconds <= 0:
            raise ConfigError("extraction.crop_seconds: must be positive or null")


def shard_path(out_dir: str | Path, shard: int) -> Path:
    return Path(out_dir) / f"shard_{shard:05d}.npy"


def _atomic_save_npy(array: np.ndarray, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        np.save(handle, array)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class _CropDataset(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], num_samples: int, sample_rate: int, first_row: int):
        self.paths, self.num_samples, self.sample_rate, self.first_row = paths, num_samples, sample_rate, first_row

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from sslsv.audio.io import read_crop

        rng = np.random.default_rng([12345, self.first_row + i])  # the same crop on every run and rank
        return torch.from_numpy(read_crop(self.paths[i], self.num_samples, self.sample_rate, rng))


def embed_crops(model: torch.nn.Module, paths: list[str], sample_rate: int, crop_seconds: float, device: torch.device,
                batch_size: int = 128, num_workers: int = 2, first_row: int = 0) -> np.ndarray:
    """(N, D) float32 embeddings of one deterministic `crop_seconds` crop of each file."""
    dataset = _CropDataset(paths, int(round(crop_seconds * sample_rate)), sample_rate, first_row)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    out = []
    with torch.inference_mode():
        for waves in loader:
            out.append(model(waves.to(device)).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def extract_representations(model: torch.nn.Module, manifest: Manifest, data_root: str | Path, out_dir: str | Path,
                            cfg: ExtractionConfig, sample_rate: int, device: torch.device, progress: bool = True,
                            source: str = "") -> np.ndarray:
    """Embed every manifest row with `model` (in eval mode); returns an (N, D) float32 read-only memmap.

    Args:
        model: waveform (B, S) -> (B, D).
        source: a description of the weights, recorded in meta.json; a folder made from other weights or another
            manifest is refused rather than silently mixed.
    """
    from sslsv.evaluation.embeddings import extract_embeddings

    out_dir = Path(out_dir)
    final = out_dir / "embeddings.npy"
    n = len(manifest)
    shards = (n + cfg.shard_size - 1) // cfg.shard_size
    meta = {"rows": n, "shard_size": cfg.shard_size, "crop_seconds": cfg.crop_seconds, "manifest": str(manifest.path),
            "source": source}
    rank, world = distributed.rank(), distributed.world_size()
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        meta_path = out_dir / "meta.json"
        if meta_path.exists():
            saved = json.loads(meta_path.read_text())
            if saved != meta:
                raise ConfigError(f"{out_dir} holds representations of another extraction ({saved}); "
                                  f"delete it or choose another folder")
        else:
            meta_path.write_text(json.dumps(meta, indent=2))
    distributed.barrier()
    if not final.exists():
        model.eval()
        root = Path(data_root)
        for shard in range(rank, shards, world):
            path = shard_path(out_dir, shard)
            if path.exists():
                continue  # finished before an interruption
            start, stop = shard * cfg.shard_size, min(n, (shard + 1) * cfg.shard_size)
            paths = [str(root / f) for f in manifest.files[start:stop]]
            if cfg.crop_seconds is None:
                emb = extract_embeddings(model, paths, sample_rate, device, cfg.batch_seconds, cfg.max_trim,
                                         progress=progress, num_workers=cfg.num_workers).numpy()
            else:
                emb = embed_crops(model, paths, sample_rate, cfg.crop_seconds, device, cfg.crop_batch_size,
                                  cfg.num_workers, first_row=start)
            _atomic_save_npy(np.ascontiguousarray(emb, dtype=np.float32), path)
            if progress:
                print(f"[rank {rank}] shard {shard + 1}/{shards} ({stop - start} utterances) -> {path}")
        distributed.barrier()
        if rank == 0:
            _concatenate(out_dir, shards, n, final)
        distributed.barrier()
    return np.load(final, mmap_mode="r")


def _concatenate(out_dir: Path, shards: int, n: int, final: Path) -> None:
    first = np.load(shard_path(out_dir, 0), mmap_mode="r")
    tmp = final.with_name("embeddings.npy.tmp")
    merged = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, first.shape[1]))
    row = 0
    for shard in range(shards):
        block = np.load(shard_path(out_dir, shard), mmap_mode="r")
        merged[row : row + len(block)] = block
        row += len(block)
    if row != n:
        raise RuntimeError(f"{out_dir}: shards hold {row} rows, the manifest {n}")
    merged.flush()
    del merged
    os.replace(tmp, final)


def extract_run(run_dir: str | Path, manifest: Manifest, data_root: str | Path, out_dir: str | Path,
                cfg: ExtractionConfig | None = None, progress: bool = True) -> np.ndarray:
    """Load a run's model (sslsv.evaluation.evaluate.load_model) and embed the manifest with it."""
    from sslsv.evaluation.evaluate import load_model
    from sslsv.training.trainer import resolve_device

    cfg = cfg or ExtractionConfig()
    device = resolve_device(cfg.device)
    model, config, source = load_model(run_dir, cfg.use_average, device)
    return extract_representations(model, manifest, data_root, out_dir, cfg, config.features.sample_rate, device,
                                   progress, source=str(source))
