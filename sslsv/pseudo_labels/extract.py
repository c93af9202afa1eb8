"""Representations of every training utterance, with a trained run's model: batched, resumable, sharded.

The manifest is cut into shards of `shard_size` consecutive rows. Each shard is written atomically to
`<out>/shard_XXXXX.npy` (a temporary file renamed into place), and an existing shard is never recomputed, so an
interrupted extraction resumes where it stopped. Under torchrun rank r computes shards r, r + W, r + 2W, ...; rank 0
then concatenates them into `<out>/embeddings.npy`, which every rank opens as a read-only memmap.

Full-length audio (the evaluation protocol, batched by length without padding) is the default; `crop_seconds`
embeds one fixed-length crop per utterance instead (deterministic: seeded by the row), which bounds the cost of
very long files.

Precision, layout and compilation are the evaluation's (`amp`, `channels_last`, `compile`; null: the run's
evaluation.amp / channels_last / compile): bf16 autocast roughly halves a Fast ResNet-34 extraction on a CPU with
AVX512-BF16 and is the usual choice on a GPU; compiling pays off over the hundreds of thousands of utterances
pseudo-labelling embeds. A non-default setting is recorded in meta.json, so shards of two settings never mix.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sslsv.config import Config, ConfigError
from sslsv.data.manifest import Manifest
from sslsv import distributed
from sslsv.evaluation import embeddings
from sslsv.evaluation.evaluate import ExtractionRuntime, extraction_layout, with_extraction

CROP_SEED = 12345  # crops of row i are drawn with default_rng([CROP_SEED, i]): the same on every run and rank


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
    amp: str | None = None  # none, bf16, fp16 (CUDA only); null: the run's evaluation.amp
    channels_last: bool | None = None  # NHWC for encoders declaring it; null: the run's evaluation.channels_last
    compile: bool | None = None  # torch.compile the encoder; null: the run's evaluation.compile

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ConfigError("extraction.shard_size: must be at least 1")
        if self.crop_seconds is not None and self.crop_seconds <= 0:
            raise ConfigError("extraction.crop_seconds: must be positive or null")
        if self.amp is not None and self.amp not in embeddings.AMP_DTYPES:
            raise ConfigError(f"extraction.amp: must be one of {', '.join(embeddings.AMP_DTYPES)} or null, "
                              f"got {self.amp!r}")


def shard_path(out_dir: str | Path, shard: int) -> Path:
    return Path(out_dir) / f"shard_{shard:05d}.npy"


def _atomic_save_npy(array: np.ndarray, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        np.save(handle, array)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def extract_representations(model: torch.nn.Module, manifest: Manifest, data_root: str | Path, out_dir: str | Path,
                            cfg: ExtractionConfig, sample_rate: int, device: torch.device, progress: bool = True,
                            source: str = "", runtime: ExtractionRuntime = ExtractionRuntime()) -> np.ndarray:
    """Embed every manifest row with `model` (in eval mode); returns an (N, D) float32 read-only memmap.

    Args:
        model: waveform (B, S) -> (B, D).
        source: a description of the weights, recorded in meta.json; a folder made from other weights or another
            manifest is refused rather than silently mixed.
        runtime: precision, layout and compilation of the model calls (default: float32, eager, as it is); a
            non-default one is part of meta.json.
    """
    out_dir = Path(out_dir)
    final = out_dir / "embeddings.npy"
    n = len(manifest)
    shards = (n + cfg.shard_size - 1) // cfg.shard_size
    meta = {"rows": n, "shard_size": cfg.shard_size, "crop_seconds": cfg.crop_seconds, "manifest": str(manifest.path),
            "source": source, **runtime.meta()}
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
            with extraction_layout(model, runtime.channels_last):
                emb = _embed_rows(model, manifest, root, start, stop, cfg, sample_rate, device, progress, runtime)
            _atomic_save_npy(np.ascontiguousarray(emb, dtype=np.float32), path)
            if progress:
                print(f"[rank {rank}] shard {shard + 1}/{shards} ({stop - start} utterances) -> {path}")
        distributed.barrier()
        if rank == 0:
            _concatenate(out_dir, shards, n, final)
        distributed.barrier()
    return np.load(final, mmap_mode="r")


def _embed_rows(model: torch.nn.Module, manifest: Manifest, root: Path, start: int, stop: int,
                cfg: ExtractionConfig, sample_rate: int, device: torch.device, progress: bool,
                runtime: ExtractionRuntime) -> np.ndarray:
    """(stop - start, D) embeddings of manifest rows [start, stop): full length, or one seeded crop each."""
    paths = [str(root / f) for f in manifest.files[start:stop]]
    how = {"amp": runtime.amp, "compile": runtime.compile}
    if cfg.crop_seconds is None:
        return embeddings.extract_embeddings(model, paths, sample_rate, device, cfg.batch_seconds, cfg.max_trim,
                                             progress=progress, num_workers=cfg.num_workers, **how).numpy()
    crops = embeddings.Crops(cfg.crop_seconds, count=1, seed=CROP_SEED, first_row=start)
    emb = embeddings.extract_embeddings(model, paths, sample_rate, device, batch_seconds=math.inf, progress=progress,
                                        num_workers=cfg.num_workers, crops=crops, batch_size=cfg.crop_batch_size,
                                        **how)
    return emb[:, 0].numpy()


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
    from sslsv.distributed import resolve_device
    from sslsv.runs import load_model

    cfg = cfg or ExtractionConfig()
    device = resolve_device(cfg.device)
    model, config, source = load_model(run_dir, cfg.use_average, device)
    return extract_representations(model, manifest, data_root, out_dir, cfg, config.features.sample_rate, device,
                                   progress, source=str(source), runtime=resolve_runtime(cfg, config, model, device))


def resolve_runtime(cfg: ExtractionConfig, run_config: Config, model: torch.nn.Module,
                    device: torch.device) -> ExtractionRuntime:
    """The extraction's amp / layout / compile: cfg's values, its nulls from the run's evaluation section; fp16
    off CUDA is refused naming extraction.amp."""
    config = with_extraction(run_config, cfg.amp, cfg.channels_last, None, cfg.compile)
    try:
        embeddings.check_amp(config.evaluation.amp, device)
    except ValueError as error:
        raise ConfigError(f"extraction.amp: {error}") from None
    return ExtractionRuntime.resolve(config, model, device)
