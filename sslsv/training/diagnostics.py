"""Collapse watch and plots (review, section 6.1 and Figure 4): a detector that applies the collapse rules a method
declares (sslsv.methods.collapse) to its per-step signals (sslsv.methods.signals) and turns them into a message,
and a plot of every `train/*` signal of a run.

The review: T. Lepage, R. Dehak, "Self-Supervised Learning for Speaker Recognition: A study and review",
2026, arXiv:2602.10829 (docs/references.md)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from sslsv.config import CollapseConfig  # noqa: F401 - re-exported
from sslsv.methods.collapse import CollapseRule, resolve_thresholds
from sslsv.runs import RunLayout

# -------------------------------------------------------------------------------------------------------- detector


class CollapseDetector:
    """Watches the per-step metrics; `check` returns a message once a collapse rule has held for
    `patience_steps` consecutive checks (and again every `patience_steps` while it keeps holding).

    rules: the trained method's `collapse_rules`; their thresholds take the values of `cfg.thresholds` where given
        (a name no rule declares is a ConfigError). The detector knows no signal by name.
    entropy_bounds: maximum value of entropy metrics, e.g. {"teacher_entropy": log(65536)} (methods expose it as
        their `entropy_bounds` attribute), read by the rules that need one.
    """

    def __init__(self, cfg: CollapseConfig, rules: Sequence[CollapseRule] = (),
                 entropy_bounds: dict[str, float] | None = None):
        self.cfg = cfg
        self.rules = tuple(rules)
        self.thresholds = resolve_thresholds(self.rules, cfg.thresholds)
        # Kept by reference: a method may fill its bounds on its first step (SimCLR: log(2N - 1)).
        self.entropy_bounds = entropy_bounds if entropy_bounds is not None else {}
        self.streaks: dict[str, int] = {}

    @property
    def should_stop(self) -> bool:
        return self.cfg.action == "stop"

    def holding(self, metrics: dict[str, float]) -> dict[str, str]:
        """Rules that hold for these metrics: rule key -> explanation. A rule with a missing signal is skipped."""
        found = {}
        for rule in self.rules:
            values = {name: _value(metrics, name) for name in rule.signals}
            if any(v is None for v in values.values()):
                continue
            message = rule.holds(values, self.entropy_bounds, self.thresholds)
            if message is not None:
                found[rule.key] = message
        return found

    def check(self, step: int, metrics: dict[str, float]) -> str | None:
        """metrics: this step's scalars (keys with or without the `train/` prefix). Returns a message or None."""
        if not self.cfg.enabled:
            return None
        holding = self.holding(metrics)
        self.streaks = {name: self.streaks.get(name, 0) + 1 for name in holding}
        due = [holding[n] for n, count in self.streaks.items() if count % self.cfg.patience_steps == 0]
        if not due:
            return None
        longest = max(self.streaks.values())
        return f"collapse suspected at step {step} (for {longest} checks): " + "; ".join(due)

    def state_dict(self) -> dict:
        """The running streaks (checkpointed by the trainer, so that a resumed run does not forget them)."""
        return {"streaks": dict(self.streaks)}

    def load_state_dict(self, state: dict) -> None:
        self.streaks = dict(state.get("streaks", {}))


def _value(metrics: dict[str, float], name: str) -> float | None:
    v = metrics.get(name, metrics.get(f"train/{name}"))
    return None if v is None or not math.isfinite(float(v)) else float(v)


# ------------------------------------------------------------------------------------------------------------ plot


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = RunLayout(run_dir).metrics
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics log (train the run first)")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{number}: not a JSON record") from None
        step = record.get("step")
        if step is not None and records and step < records[-1].get("step", step):
            # A resumed run starts again after its last checkpoint: the interrupted run's lines from that step on
            # were superseded, so keep only the resumed run's.
            records = [r for r in records if r.get("step", -1) < step]
        records.append(record)
    return records


def plot_diagnostics(run_dir: str | Path, out_png: str | Path | None = None) -> Path:
    """Plot the loss and every `train/*` signal of run_dir/metrics.jsonl over steps, one panel each.
    Returns the PNG path (default run_dir/diagnostics.png)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_metrics(run_dir)
    names = ["loss"] if any("loss" in r for r in records) else []
    for record in records:
        for key in record:
            if key.startswith("train/") and key not in names:
                names.append(key)
    if not names:
        raise ValueError(f"{run_dir}/metrics.jsonl: no loss or train/* signal to plot")
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    figure = Figure(figsize=(4.5 * cols, 3.0 * rows))
    FigureCanvasAgg(figure)
    for i, name in enumerate(names):
        axis = figure.add_subplot(rows, cols, i + 1)
        points = [(r["step"], r[name]) for r in records if name in r and isinstance(r[name], (int, float))]
        if points:
            steps, values = zip(*points)
            axis.plot(steps, values, linewidth=1.2)
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    out = Path(out_png) if out_png else Path(run_dir) / "diagnostics.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    return out
