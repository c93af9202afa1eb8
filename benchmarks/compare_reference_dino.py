"""Step-by-step comparison of DINO training steps between this toolkit (sslsv/methods/dino.py, with the settings of
configs/dino/fast_resnet34_demo.yml) and the review authors' code (theolepage/sslsv, methods/DINO), on the SAME
inputs and the SAME initial weights.

    python benchmarks/compare_reference_dino.py --reference /path/to/theolepage-sslsv --reference-python /path/to/python

The reference's package is also named `sslsv`, so it runs in a separate process (`--reference-python`, an
environment that can import the reference checkout; `--role reference` is that process's entry point). This
process builds the inputs and our DINO, saves the inputs and our initial weights to a .pt file, runs the reference on
them, and prints every compared quantity side by side with the largest absolute difference.

What is compared. Both sides use the same stand-in encoder (`StandInEncoder` below: framewise linear layer, ReLU,
mean over frames, BatchNorm; it has BN buffers, so the teachers' running statistics are compared too) in place of the
ResNet, because the two toolkits' ResNets name their parameters differently and the DINO-specific logic sits after
the encoder: the head (MLP with BN + GELU, L2 normalisation, weight-normalised last layer with g fixed to 1), the
loss (student temperature, teacher temperature and its warm-up, centring: value used and update), which views the
teacher and the student see (the authors' local views are X[global_count:, :, :L // 2], the first half of each
sampled frame; ours get the same crops here), the EMA of the teacher's parameters and buffers, freezing of the last
layer during epoch 0, per-parameter clipping at 3, the weight-decay groups, the optimiser step (SGD, momentum 0.9)
and the evaluation network (the teacher encoder). Each side runs its own step sequence: ours as
sslsv/training/trainer.py Trainer.train_step (lr per group, forward, zero_grad, backward, before_optimizer_step,
clip_gradients_per_parameter, optimiser step, after_optimizer_step), the reference's as its Trainer._train_step_loop
(on_train_step_start, update_optim, forward, train_step, zero_grad, backward, on_after_backward, optimiser step,
on_train_step_end). In the stepped comparison the learning rate is held constant on both sides and the EMA momentum
is matched (the reference sets tau from step / nb_steps before the step; we pass the same progress): the schedules
themselves (learning rate, EMA momentum, teacher temperature) are compared separately, as functions of the step
(the reference's 'warmup+cosine' is the schedule its DINO.update_optim hard-coded, with 10 warm-up epochs, in the
2024 code; 'default' is what its DINO configs get from the current code, which no longer hard-codes it).

CPU only, single thread, a few seconds.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
STUDENT = {"encoder.": "encoder.", "head.": "head."}  # our prefix -> the reference's
TEACHER = {"teacher_encoder.": "encoder_momentum.", "teacher_head.": "head_momentum."}


class StandInEncoder(nn.Module):
    """(B, L) -> (B, dim): framewise Linear, ReLU, mean over frames, BatchNorm1d (buffers for the EMA check). Any
    L that is a multiple of `frame` works, so the global (L) and local (L // 2) crops go through the same network."""

    def __init__(self, frame: int = 40, dim: int = 64):
        super().__init__()
        self.frame = frame
        self.embed_dim = self.encoder_dim = dim  # ours reads embed_dim, the reference encoder_dim
        self.linear = nn.Linear(frame, dim)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.reshape(x.shape[0], -1, self.frame)
        return self.bn(torch.relu(self.linear(frames)).mean(dim=1))


class Recorder:
    """Outputs of a module's forward calls, in call order (both sides call the student head on the 2 B global
    crops, then on the 4 B local crops, and the teacher head once on the 2 B global crops)."""

    def __init__(self, module: nn.Module):
        self.outputs: list[torch.Tensor] = []
        module.register_forward_hook(lambda _m, _i, out: self.outputs.append(out.detach().clone()))

    def take(self) -> torch.Tensor:
        out, self.outputs = torch.cat(self.outputs), []
        return out


# ----------------------------------------------------------------------------------------------------------------
# Reference side (runs under --reference-python, with the reference checkout first on sys.path)
# ----------------------------------------------------------------------------------------------------------------


def run_reference(checkout: str, data_path: str, out_path: str) -> None:
    sys.path.insert(0, str(Path(checkout).resolve()))
    torch.set_num_threads(1)
    from sslsv.methods.DINO.DINO import DINO, DINOConfig
    from sslsv.trainer.Trainer import LearningRateSchedulerEnum

    data = torch.load(data_path)
    s = data["settings"]

    def build(teacher_temperature: float, warmup_temperature: float, warmup_epochs: int) -> DINO:
        config = DINOConfig(global_count=s["global_views"], local_count=s["local_views"], start_tau=s["momentum_start"],
                            head_hidden_dim=s["hidden_dim"], head_bottleneck_dim=s["bottleneck_dim"],
                            head_output_dim=s["out_dim"], freeze_last_layer=s["freeze_last_layer_epochs"],
                            clip_grad=s["grad_clip"], student_temperature=s["student_temperature"],
                            teacher_temperature=teacher_temperature, teacher_temperature_warmup=warmup_temperature,
                            teacher_temperature_warmup_epochs=warmup_epochs)
        return DINO(config, lambda: StandInEncoder(s["frame"], s["embed_dim"]))

    def fake_trainer(sched, lr, min_lr, warmup):
        return SimpleNamespace(config=SimpleNamespace(trainer=SimpleNamespace(
            learning_rate_sched=sched, learning_rate_min=min_lr, learning_rate_warmup=warmup)))

    result: dict = {}
    # The demo's tau_t 0.07 with no warm-up is the authors' t-0.07 config (teacher_temperature_warmup: 0.07).
    model = build(s["teacher_temperature"], s["teacher_temperature"], 10)
    result["center_momentum"] = model.loss_fn.center_momentum
    missing, unexpected = model.load_state_dict(data["initial"], strict=False)
    result["missing_keys"] = sorted(missing)
    result["unexpected_keys"] = sorted(unexpected)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = model.get_learnable_params()
    optimizer = torch.optim.SGD(groups, momentum=0.9, lr=0, weight_decay=s["weight_decay"])  # as Trainer._init_optimizer
    model.trainer = fake_trainer(LearningRateSchedulerEnum.DEFAULT, s["lr"], s["min_lr"], 0)  # constant lr, epoch < 5
    head_rec, teacher_rec = Recorder(model.head), Recorder(model.head_momentum)
    enc_rec = Recorder(model.encoder)
    steps = []
    spe, nb_steps = s["steps_per_epoch"], s["total_steps"]
    model.train()
    for step, X in enumerate(data["inputs"]):
        epoch = step // spe
        if step % spe == 0:
            model.on_train_epoch_start(epoch, s["epochs"])
        model.on_train_step_start(step, nb_steps)
        lr, wd = model.update_optim(optimizer, s["lr"], s["weight_decay"], step, nb_steps, spe)
        center_before = model.loss_fn.center.clone()
        Z = model(X, training=True)
        loss = model.train_step(Z, step=step, step_rel=step % spe)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        model.on_after_backward()
        grads = {names[id(p)]: (None if p.grad is None else p.grad.clone())
                 for g in optimizer.param_groups for p in g["params"]}
        optimizer.step()
        model.on_train_step_end(step, nb_steps)
        steps.append({
            "tau": model.momentum_updater.tau, "lr": lr,
            "weight_decay_per_group": [g["weight_decay"] for g in optimizer.param_groups],
            "encoder_out": enc_rec.take(), "student": head_rec.take(), "teacher": teacher_rec.take(),
            "loss": loss.item(), "teacher_entropy": model.step_metrics["train/teacher_h"].item(),
            "teacher_temperature": float(model.loss_fn._get_teacher_temp()),
            "center_before": center_before, "center_after": model.loss_fn.center.clone(),
            "grads": grads, "state": {k: v.clone() for k, v in model.state_dict().items()},
        })
    result["steps"] = steps
    result["decayed"] = sorted(names[id(p)] for p in optimizer.param_groups[0]["params"])
    result["not_decayed"] = sorted(names[id(p)] for p in optimizer.param_groups[1]["params"])
    model.eval()
    with torch.no_grad():
        result["eval_embedding"] = model(data["eval_input"])  # forward(training=False): encoder_momentum
        result["eval_student"] = model.encoder(data["eval_input"])

    # Clipping and freezing on given gradients (epoch 0: last layer frozen; epoch 1: not).
    clipped = {}
    for epoch in (0, 1):
        model.train()
        model.current_epoch = epoch
        for name, p in model.named_parameters():
            if name in data["clip_grads"]:
                p.grad = data["clip_grads"][name].clone()
        model.on_after_backward()
        clipped[epoch] = {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()
                          if n in data["clip_grads"]}
    result["clipped"] = clipped

    # Schedules as functions of the step / epoch.
    sch = data["schedules"]
    lrs = {}
    for key, sched in (("warmup_cosine", LearningRateSchedulerEnum.WARMUP_COSINE_DECAY),
                       ("default", LearningRateSchedulerEnum.DEFAULT)):
        model.trainer = fake_trainer(sched, sch["lr"], sch["min_lr"], sch["warmup_epochs"])
        values = []
        for step in range(sch["total_steps"]):
            values.append(model.update_optim(optimizer, sch["lr"], 0.0, step, sch["total_steps"],
                                             sch["steps_per_epoch"])[0])
        lrs[key] = torch.tensor(values, dtype=torch.float64)
    result["lr_schedules"] = lrs
    taus = []
    for step in range(sch["total_steps"]):
        model.momentum_updater.start_tau = sch["momentum_start"]
        model.on_train_step_start(step, sch["total_steps"])
        taus.append(model.momentum_updater.tau)
    result["tau_schedule"] = torch.tensor(taus, dtype=torch.float64)
    temps = {}
    for key, (final, start, epochs) in sch["temperatures"].items():
        loss_fn = build(final, start, epochs).loss_fn
        values = []
        for epoch in range(sch["temperature_epochs"]):
            loss_fn.epoch = epoch
            values.append(float(loss_fn._get_teacher_temp()))
        temps[key] = torch.tensor(values, dtype=torch.float64)
    result["temperature_schedules"] = temps
    torch.save(result, out_path)


# ----------------------------------------------------------------------------------------------------------------
# Our side and the comparison
# ----------------------------------------------------------------------------------------------------------------


def ours_to_reference(state: dict) -> dict:
    """Our DINO state dict (student and teacher) under the reference's names (weight_g of the weight-normalised
    layers stays at its fixed 1 on the reference side; our `center` is the reference's loss_fn.center)."""
    out = {}
    for key, value in state.items():
        for ours, theirs in {**STUDENT, **TEACHER}.items():
            if key.startswith(ours):
                out[theirs + key[len(ours):]] = value.clone()
    return out


class Table:
    def __init__(self):
        self.rows: list[tuple[str, str, str, float | None]] = []

    @staticmethod
    def _fmt(x) -> str:
        if x is None:
            return "None"
        if isinstance(x, torch.Tensor):
            return f"|x|max {x.abs().max().item():.4g}" if x.numel() > 1 else f"{x.item():.6g}"
        if isinstance(x, float):
            return f"{x:.6g}"
        return str(x)

    def add(self, name: str, ours, theirs, diff: float | None = None) -> None:
        if diff is None and ours is not None and theirs is not None and not isinstance(ours, str) \
                and not isinstance(theirs, str):
            a, b = torch.as_tensor(ours, dtype=torch.float64), torch.as_tensor(theirs, dtype=torch.float64)
            diff = (a - b).abs().max().item() if a.shape == b.shape else float("nan")
        self.rows.append((name, self._fmt(ours), self._fmt(theirs), diff))

    def print(self) -> None:
        width = max(len(r[0]) for r in self.rows)
        print(f"{'quantity':<{width}}  {'ours':>22}  {'reference':>22}  max |diff|")
        for name, a, b, d in self.rows:
            ds = "-" if d is None else f"{d:.3g}"
            print(f"{name:<{width}}  {a:>22}  {b:>22}  {ds}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, help="the reference checkout (theolepage/sslsv)")
    parser.add_argument("--reference-python", default=sys.executable,
                        help="a Python that can import the reference checkout (its torch, dacite, ruamel.yaml ...)")
    parser.add_argument("--role", choices=("ours", "reference"), default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--config", default="configs/dino/fast_resnet34_demo.yml", help="our DINO config")
    parser.add_argument("--batch-size", type=int, default=8, help="utterances per step")
    parser.add_argument("--steps", type=int, default=3, help="training steps compared (2 per epoch)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs and our initial weights")
    args = parser.parse_args(argv)
    if args.role == "reference":
        run_reference(args.reference, args.data, args.out)
        return 0

    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(1)
    from sslsv.config import load_config
    from sslsv.methods.base import Batch, TrainingInfo
    from sslsv.methods.dino import DINO
    from sslsv.methods.ema import cosine_schedule
    from sslsv.training.schedules import learning_rate
    from sslsv.training.trainer import build_optimizer, clip_gradients_per_parameter

    config = load_config(ROOT / args.config)
    mcfg, tcfg = config.method.options, config.trainer
    if config.method.name != "dino":
        raise SystemExit(f"--config: method.name is {config.method.name!r}, not dino")
    g = mcfg.global_views
    local = sum(group.count for group in config.dataset.views) - g
    spe, epochs, B, frame, length = 2, tcfg.epochs, args.batch_size, 40, 1600
    settings = {"global_views": g, "local_views": local, "momentum_start": mcfg.momentum_start,
                "hidden_dim": mcfg.hidden_dim, "bottleneck_dim": mcfg.bottleneck_dim, "out_dim": mcfg.out_dim,
                "freeze_last_layer_epochs": mcfg.freeze_last_layer_epochs, "grad_clip": tcfg.grad_clip,
                "student_temperature": mcfg.student_temperature, "teacher_temperature": mcfg.teacher_temperature,
                "weight_decay": tcfg.weight_decay, "lr": tcfg.lr, "min_lr": tcfg.min_lr, "steps_per_epoch": spe,
                "epochs": epochs, "total_steps": spe * epochs, "frame": frame, "embed_dim": 64}
    if mcfg.teacher_temperature_warmup or mcfg.momentum_end != 1.0 or mcfg.center_momentum != 0.9 \
            or tcfg.grad_clip_mode != "per_parameter" or tcfg.optimizer != "sgd" or not mcfg.head_batch_norm:
        print("note: this config uses options the reference cannot express the same way; compared as the reference "
              "does it by default")

    torch.manual_seed(args.seed)
    method = DINO(StandInEncoder(frame, 64), mcfg, TrainingInfo(num_speakers=1, num_samples=B,
                                                                 steps_per_epoch=spe, epochs=epochs))
    inputs = [torch.randn(B, g + local, length) for _ in range(args.steps)]
    eval_input = torch.randn(B, 2 * length)
    initial = {k: v.clone() for k, v in method.state_dict().items()}
    names = {id(p): n for n, p in method.named_parameters()}
    clip_grads = {}
    for i, (name, p) in enumerate(method.named_parameters()):
        if p.requires_grad:
            grad = torch.randn_like(p)
            clip_grads[name] = grad * ((30.0 if i % 2 else 0.5) / grad.norm())  # same names on both sides
    temp_epochs, warmup_epochs = 12, 10
    schedules = {"lr": tcfg.lr, "min_lr": tcfg.min_lr, "warmup_epochs": int(tcfg.warmup_epochs),
                 "steps_per_epoch": 5, "total_steps": 5 * epochs, "momentum_start": mcfg.momentum_start,
                 "temperature_epochs": temp_epochs,
                 "temperatures": {"constant": (mcfg.teacher_temperature, mcfg.teacher_temperature, warmup_epochs),
                                  "warmup_0.04_to_0.07_10_epochs": (0.07, 0.04, warmup_epochs)}}

    # Our steps, as Trainer.train_step (constant lr, EMA momentum matched to the reference's tau of the step).
    step_cfg = type(tcfg)(**{**tcfg.__dict__, "schedule": "step", "warmup_epochs": 0})
    optimizer = build_optimizer(config, method)
    head_rec, teacher_rec, enc_rec = Recorder(method.head), Recorder(method.teacher_head), Recorder(method.encoder)
    ours_steps = []
    method.train()
    for step, X in enumerate(inputs):
        epoch = step // spe
        if step % spe == 0:
            method.on_epoch_start(epoch)
        lr = learning_rate(step_cfg, step, spe)
        for group in optimizer.param_groups:
            group["lr"] = lr
        views = [X[:, v] for v in range(g)] + [X[:, v, : length // 2] for v in range(g, g + local)]
        center_before = method.center.clone()
        output = method(Batch(views, torch.zeros(B, dtype=torch.long), torch.arange(B)))
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        method.before_optimizer_step(epoch)
        clip_gradients_per_parameter(method.parameters(), tcfg.grad_clip)
        grads = {names[id(p)]: (None if p.grad is None else p.grad.clone())
                 for grp in optimizer.param_groups for p in grp["params"]}
        optimizer.step()
        progress = step / settings["total_steps"]  # the reference's tau of this step (see the module docstring)
        method.after_optimizer_step(progress)
        ours_steps.append({
            "tau": cosine_schedule(progress, mcfg.momentum_start, mcfg.momentum_end), "lr": lr,
            "encoder_out": enc_rec.take(), "student": head_rec.take(), "teacher": teacher_rec.take(),
            "loss": output.loss.item(), "teacher_entropy": output.metrics["teacher_entropy"].item(),
            "teacher_temperature": method.teacher_temperature(epoch),
            "center_before": center_before, "center_after": method.center.clone(),
            "grads": grads, "state": {k: v.clone() for k, v in method.state_dict().items()},
        })
    decay = {names[id(p)] for grp in optimizer.param_groups if grp["weight_decay"] > 0 for p in grp["params"]}
    no_decay = {names[id(p)] for grp in optimizer.param_groups if grp["weight_decay"] == 0 for p in grp["params"]}
    method.eval()
    with torch.no_grad():
        eval_embedding = method.embedding_model()(eval_input)
        eval_student = method.encoder(eval_input)

    ours_clipped = {}
    for epoch in (0, 1):
        method.train()
        for name, p in method.named_parameters():
            if name in clip_grads:
                p.grad = clip_grads[name].clone()
        method.before_optimizer_step(epoch)
        clip_gradients_per_parameter(method.parameters(), tcfg.grad_clip)
        ours_clipped[epoch] = {n: (None if p.grad is None else p.grad.clone()) for n, p in method.named_parameters()
                               if n in clip_grads}

    with tempfile.TemporaryDirectory(prefix="compare_dino_") as folder:
        data_path, out_path = Path(folder) / "inputs.pt", Path(folder) / "reference.pt"
        torch.save({"settings": settings, "initial": ours_to_reference(initial), "inputs": inputs,
                    "eval_input": eval_input, "clip_grads": clip_grads, "schedules": schedules}, data_path)
        subprocess.run([args.reference_python, __file__, "--role", "reference", "--reference", args.reference,
                        "--data", str(data_path), "--out", str(out_path)], check=True, cwd=folder)
        ref = torch.load(out_path)

    table = Table()
    table.add("initial weights: keys left at the reference's own values", "-",
              ", ".join(k for k in ref["missing_keys"] if not k.endswith("weight_g")) or "none (only weight_g = 1)",
              None)
    table.add("centre momentum", mcfg.center_momentum, ref["center_momentum"])
    mapping = {**STUDENT, **TEACHER}

    def theirs_name(ours_name: str) -> str:
        for a, b in mapping.items():
            if ours_name.startswith(a):
                return b + ours_name[len(a):]
        return ours_name

    for step, (a, b) in enumerate(zip(ours_steps, ref["steps"])):
        p = f"step {step} (epoch {step // spe}) "
        table.add(p + "lr", a["lr"], b["lr"])
        table.add(p + "EMA momentum", a["tau"], b["tau"])
        table.add(p + "teacher temperature", a["teacher_temperature"], b["teacher_temperature"])
        table.add(p + "encoder outputs (6B x D, student)", a["encoder_out"], b["encoder_out"])
        table.add(p + "student head outputs (6B x K)", a["student"], b["student"])
        table.add(p + "teacher head outputs (2B x K)", a["teacher"], b["teacher"])
        table.add(p + "centre used in the loss", a["center_before"], b["center_before"])
        table.add(p + "loss", a["loss"], b["loss"])
        table.add(p + "teacher entropy", a["teacher_entropy"], b["teacher_entropy"])
        table.add(p + "centre after the step", a["center_after"], b["center_after"])
        ga = a["grads"]
        frozen_a = sorted(n for n, v in ga.items() if v is None)
        frozen_b = sorted(n for n, v in b["grads"].items() if v is None)
        table.add(p + "params without gradient", ", ".join(frozen_a) or "none",
                  ", ".join(map(str, frozen_b)) or "none", None)
        worst = max(((ga[n] - b["grads"][theirs_name(n)]).abs().max().item(), n) for n in ga
                    if ga[n] is not None and b["grads"].get(theirs_name(n)) is not None)
        table.add(p + f"clipped gradients (worst: {worst[1]})", ga[worst[1]], b["grads"][theirs_name(worst[1])],
                  worst[0])
        for prefix, label in (("encoder.", "student encoder"), ("head.", "student head"),
                              ("teacher_encoder.", "teacher encoder"), ("teacher_head.", "teacher head")):
            for kind in ("params", "buffers"):
                keys = [k for k in a["state"] if k.startswith(prefix)
                        and (("running" in k or "num_batches" in k) == (kind == "buffers"))]
                diffs = [((a["state"][k].double() - b["state"][theirs_name(k)].double()).abs().max().item(), k)
                         for k in keys]
                if diffs:
                    d, k = max(diffs)
                    table.add(p + f"{label} {kind} after the step (worst: {k})", a["state"][k],
                              b["state"][theirs_name(k)], d)
    table.add("weight-decayed params", ", ".join(sorted(decay)),
              ", ".join(sorted(ref["decayed"])), None if sorted(decay) != sorted(ref["decayed"]) else 0.0)
    table.add("params without weight decay", ", ".join(sorted(no_decay)), ", ".join(sorted(ref["not_decayed"])),
              None if sorted(no_decay) != sorted(ref["not_decayed"]) else 0.0)
    table.add("evaluation embedding (teacher encoder, eval mode)", eval_embedding, ref["eval_embedding"])
    table.add("student encoder, eval mode (not used for evaluation)", eval_student, ref["eval_student"])
    for epoch in (0, 1):
        a, b = ours_clipped[epoch], ref["clipped"][epoch]
        none_a = sorted(n for n, v in a.items() if v is None)
        none_b = sorted(n for n, v in b.items() if v is None)
        table.add(f"given gradients, epoch {epoch}: dropped", ", ".join(none_a) or "none",
                  ", ".join(none_b) or "none", None)
        d = max((a[n] - b[n]).abs().max().item() for n in a if a[n] is not None and b.get(n) is not None)
        table.add(f"given gradients, epoch {epoch}: clipped per parameter at {tcfg.grad_clip:g}", "-", "-", d)

    # Schedules: ours as the trainer computes them, the reference's as its trainer and method do.
    sch = schedules
    sch_cfg = type(tcfg)(**{**tcfg.__dict__})
    ours_lr = torch.tensor([learning_rate(sch_cfg, s, sch["steps_per_epoch"]) for s in range(sch["total_steps"])],
                           dtype=torch.float64)
    ours_tau = torch.tensor([cosine_schedule((s + 1) / sch["total_steps"], mcfg.momentum_start, mcfg.momentum_end)
                             for s in range(sch["total_steps"])], dtype=torch.float64)
    print()
    table.print()
    print(f"\nSchedules over {epochs} epochs x {sch['steps_per_epoch']} steps (ours: {args.config}: "
          f"schedule {tcfg.schedule}, lr {tcfg.lr:g}, min_lr {tcfg.min_lr:g}, warmup_epochs {tcfg.warmup_epochs:g}):")
    for key, theirs in ref["lr_schedules"].items():
        print(f"  lr, reference '{key}': max |diff| {(ours_lr - theirs).abs().max().item():.3g}")
    print("  step  lr ours      lr ref(warmup+cosine)  lr ref(default)  EMA m ours (trainer)  EMA m reference")
    for s in range(sch["total_steps"]):
        print(f"  {s:4d}  {ours_lr[s].item():.6f}    {ref['lr_schedules']['warmup_cosine'][s].item():.6f}"
              f"               {ref['lr_schedules']['default'][s].item():.6f}         {ours_tau[s].item():.6f}"
              f"             {ref['tau_schedule'][s].item():.6f}")
    print(f"  EMA momentum: max |diff| {(ours_tau - ref['tau_schedule']).abs().max().item():.3g} "
          "(ours: progress (step + 1) / total after the step; reference: step / total, set before the step)")
    for key, (final, start, warm) in sch["temperatures"].items():
        variant = type(mcfg)(**{**mcfg.__dict__, "teacher_temperature": final, "warmup_teacher_temperature": start,
                                "warmup_teacher_epochs": warm, "teacher_temperature_warmup": start != final})
        m = DINO(StandInEncoder(frame, 8), type(mcfg)(**{**variant.__dict__, "hidden_dim": 8, "out_dim": 8}),
                 TrainingInfo(num_speakers=1, num_samples=1, steps_per_epoch=1, epochs=1))
        ours_t = torch.tensor([m.teacher_temperature(e) for e in range(sch["temperature_epochs"])],
                              dtype=torch.float64)
        theirs = ref["temperature_schedules"][key]
        print(f"  teacher temperature '{key}': max |diff| {(ours_t - theirs).abs().max().item():.3g}")
        print("    ours:      " + " ".join(f"{t:.4f}" for t in ours_t.tolist()))
        print("    reference: " + " ".join(f"{t:.4f}" for t in theirs.tolist()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
