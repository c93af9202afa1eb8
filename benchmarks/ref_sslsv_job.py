"""One job of benchmarks/bench_train.py on the reference toolkit (theolepage/sslsv): run with the reference's Python,
prints one JSON line with the same figures as our jobs (samples/s, CPU seconds of the process tree, peak PSS).

    python benchmarks/ref_sslsv_job.py --sslsv /work/ref/sslsv --job simclr --batch-size 64 --steps 8 --warmup 2

It builds the reference's own objects as its sslsv/bin/train.py does (load_config, load_train_dataloader,
load_model, MethodWrapper, Trainer, Trainer._init_optimizer, on_train_start) and runs its own
`Trainer._train_step_loop` on a loader that stops after warmup + steps batches (no evaluation, no checkpoint,
no wandb/tensorboard). The demo corpus is laid out as the reference expects it (musan_split/<category>/*/*.wav,
simulated_rirs/*/*/*.wav: symbolic links in a temporary folder). The configs are the authors' (models/ssl/voxceleb2)
at this batch size and worker count. Do not import this toolkit's sslsv here: the reference's package has the
same name.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import PeakMemory, max_rss_bytes, tree_cpu  # noqa: E402  (pure /proc helpers, no sslsv import)

# The authors' configs (models/ssl/voxceleb2/...), as YAML text; batch size, workers and paths are filled in.
CONFIGS = {
    # simclr_proj-2048-BN-R-2048-BN-R-512_t-0.03: thin ResNet-34, SAP, 40 mels, 2 x 2 s, reverb + noise
    "simclr": """
encoder: {type: resnet34}
method: {type: simclr, projector_hidden_dim: 2048, projector_output_dim: 512, temperature: 0.03}
dataset: {ssl: true, augmentation: {enable: true}}
""",
    # dino_proj-2048-BN-G-2048-BN-G-256-L2-65536_G-2x4_L-4x2_t-0.04
    "dino": """
encoder: {type: resnet34, pooling_mode: stats, mel_n_mels: 80}
method: {type: dino}
trainer: {optimizer: sgd, learning_rate: 0.2, weight_decay: 0.00005}
dataset: {ssl: true, frame_length: 64000, frame_sampling: dino, augmentation: {enable: true, strategy: all}}
""",
    # dino_enc-ECAPATDNN-1024_proj-2048-BN-G-2048-BN-G-256-L2-65536_G-2x4_L-4x2_t-0.04
    "dino_ecapa": """
encoder: {type: ecapatdnn, channels: [1024, 1024, 1024, 1024, 3072], mel_n_mels: 80}
method: {type: dino}
trainer: {optimizer: sgd, learning_rate: 0.2, weight_decay: 0.00005}
dataset: {ssl: true, frame_length: 64000, frame_sampling: dino, augmentation: {enable: true, strategy: all}}
""",
}
DESCRIPTION = {
    "simclr": {"views": ["2 x 2 s"], "n_mels": 40, "augmentation": "both"},
    "dino": {"views": ["2 x 4 s", "4 x 2 s"], "n_mels": 80, "augmentation": "all"},
    "dino_ecapa": {"views": ["2 x 4 s", "4 x 2 s"], "n_mels": 80, "augmentation": "all"},
}
DIFFERENCES = [
    "reads each whole file (padded to the longest crop), crops in the worker",
    "reverb and noise in the loader workers on the CPU (scipy convolve), with the unaugmented-probability of its "
    "config; ours plans them in the workers and applies them in the step (augment phase, on the device)",
    "sets the learning rate of every parameter group in Python at each step (update_optim)",
    "no finiteness check, no collapse watch, no per-step device->host read of its metrics by the trainer",
]


def demo_layout(data_root: Path, folder: Path) -> None:
    """The demo corpus as the reference reads it: base_path/demo/... (the manifest's paths), musan_split and
    simulated_rirs at the depths its globs expect."""
    folder.mkdir(parents=True)
    (folder / "demo").symlink_to((data_root / "demo").resolve())
    for category in ("noise", "music", "speech"):
        target = folder / "musan_split" / category / "demo"
        target.mkdir(parents=True)
        for wav in sorted((data_root / "demo" / "musan" / category).rglob("*.wav")):
            (target / wav.name).symlink_to(wav.resolve())
    target = folder / "simulated_rirs" / "demo" / "rirs"
    target.mkdir(parents=True)
    for wav in sorted((data_root / "demo" / "rirs").rglob("*.wav")):
        (target / wav.name).symlink_to(wav.resolve())


class StopAfter:
    """The reference's DataLoader, re-iterated over epochs, stopping after `total` batches; marks the time and the
    tree's CPU seconds after `warmup` batches were trained."""

    def __init__(self, loader, warmup: int, total: int):
        self.loader, self.warmup, self.total, self.marks = loader, warmup, total, {}

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        done = 0
        while True:
            for batch in self.loader:
                if done == self.warmup:
                    self.marks["start"] = (time.perf_counter(), tree_cpu(os.getpid()))
                if done == self.total:
                    self.marks["end"] = (time.perf_counter(), tree_cpu(os.getpid()))
                    return
                done += 1
                yield batch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sslsv", required=True, help="the reference toolkit's checkout")
    parser.add_argument("--job", choices=sorted(CONFIGS) + ["extract"], required=True,
                        help="a training job, or extract: full-length embeddings of --files (bench_extract.py)")
    parser.add_argument("--files", help="extract: text file of audio paths relative to --data-root")
    parser.add_argument("--batch-size", type=int, default=64, help="utterances per step")
    parser.add_argument("--steps", type=int, default=8, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--workers", type=int, default=2, help="loader workers")
    parser.add_argument("--data-root", default="data", help="folder holding demo/")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the reference picks cuda when present)")
    parser.add_argument("--log-every", type=int, default=5, help="ignored (the reference logs every 100 steps)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(args.sslsv).resolve()))
    import torch
    from ruamel.yaml import YAML

    from sslsv.bin.train import MethodWrapper
    from sslsv.trainer.EpochLogger import EpochLogger
    from sslsv.trainer.Trainer import Trainer
    from sslsv.utils.helpers import load_config, load_model, load_train_dataloader

    data_root = Path(args.data_root).resolve()
    work = Path(tempfile.mkdtemp(prefix="ref_sslsv_"))
    os.chdir(work)  # the reference reads ./data (dataset.base_path, a Path its YAML loader cannot set)
    demo_layout(data_root, work / "data")
    if args.job == "extract":
        return extract(args, data_root, work)
    config_data = YAML(typ="safe", pure=True).load(CONFIGS[args.job])
    config_data.setdefault("trainer", {}).update({"batch_size": args.batch_size, "epochs": 1000})
    config_data["dataset"].update({"train": "demo/train.csv",
                                   "num_workers": args.workers, "pin_memory": args.device != "cpu"})
    config_data["evaluation"] = {"validation": [], "test": []}
    model_dir = Path("models") / args.job
    model_dir.mkdir(parents=True)
    (model_dir / "config.yml").write_text(json.dumps(config_data))
    with PeakMemory() as memory:
        config = load_config(str(model_dir / "config.yml"), verbose=False)
        device = torch.device(args.device)
        loader = load_train_dataloader(config)
        model = MethodWrapper(load_model(config).to(device))
        trainer = Trainer(model=model, train_dataloader=loader, config=config, evaluate=None, device=device)
        trainer._init_optimizer()
        model.module.trainer = trainer
        model.module.on_train_start()
        trainer.epoch = 0
        model.module.on_train_epoch_start(0, config.trainer.epochs)
        model.train()
        trainer.train_dataloader = StopAfter(loader, args.warmup, args.warmup + args.steps)
        trainer._train_step_loop(EpochLogger())
    marks = trainer.train_dataloader.marks
    (t0, (u0, s0)), (t1, (u1, s1)) = marks["start"], marks["end"]
    samples = args.steps * args.batch_size
    print(json.dumps({
        "job": args.job, "toolkit": "reference (theolepage/sslsv)", "batch_size": args.batch_size,
        "steps": args.steps, "workers": args.workers, **DESCRIPTION[args.job], "amp": "none", "device": str(device),
        "wall_s": t1 - t0, "samples_per_s": samples / (t1 - t0), "cpu_user_s": u1 - u0, "cpu_sys_s": s1 - s0,
        "cpu_s_per_sample": (u1 - u0 + s1 - s0) / samples, "peak_pss_gb": memory.peak / 1e9,
        "peak_rss_main_gb": max_rss_bytes() / 1e9, "peak_device_gb": None, "step_s": {},
        "torch_threads": torch.get_num_threads(), "differences": DIFFERENCES,
    }))
    return 0


def extract(args, data_root: Path, work: Path) -> int:
    """Full-length embeddings of the files listed in --files with the reference's own evaluation loop
    (`BaseEvaluation._extract_embeddings` with `frame_length: null`, which sets batch 1, as its vox1-O tasks do),
    the SimCLR config's model (thin ResNet-34, SAP, 40 mels) with random weights in eval mode."""
    import torch
    from ruamel.yaml import YAML

    from sslsv.bin.train import MethodWrapper
    from sslsv.evaluations._BaseEvaluation import BaseEvaluation, EvaluationTaskConfig
    from sslsv.utils.helpers import load_config, load_model

    (work / "data" / "bench_extract").symlink_to((data_root / "bench_extract").resolve())
    files = Path(args.files).read_text().split()
    config_data = YAML(typ="safe", pure=True).load(CONFIGS["simclr"])
    config_data["dataset"].update({"num_workers": args.workers, "pin_memory": args.device != "cpu"})
    config_data["evaluation"] = {"validation": [], "test": []}
    model_dir = Path("models") / "extract"
    model_dir.mkdir(parents=True)
    (model_dir / "config.yml").write_text(json.dumps(config_data))
    config = load_config(str(model_dir / "config.yml"), verbose=False)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = MethodWrapper(load_model(config).to(device))
    model.eval()
    evaluation = BaseEvaluation(model, config, EvaluationTaskConfig(frame_length=None), device)
    with PeakMemory() as memory:
        (u0, s0), start = tree_cpu(os.getpid()), time.perf_counter()
        embeddings = evaluation._extract_embeddings(files)
        wall, (u1, s1) = time.perf_counter() - start, tree_cpu(os.getpid())
    print(json.dumps({"toolkit": "reference (theolepage/sslsv) batch 1", "utterances": len(embeddings),
                      "dim": int(next(iter(embeddings.values())).shape[-1]), "wall_s": wall, "cpu_user_s": u1 - u0,
                      "cpu_sys_s": s1 - s0, "peak_pss_gb": memory.peak / 1e9,
                      "torch_threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
