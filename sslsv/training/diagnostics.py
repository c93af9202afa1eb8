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
        return {key: message for key, message in self._judged(metrics).items() if message is not None}

    def _judged(self, metrics: dict[str, float]) -> dict[str, str | None]:
        """Every rule whose signals are all present (and finite): rule key -> its explanation, or None."""
        judged = {}
        for rule in self.rules:
            values = {name: _value(metrics, name) for name in rule.signals}
            if any(v is None for v in values.values()):
                continue
            judged[rule.key] = rule.holds(values, self.entropy_bounds, self.thresholds)
        return judged

    def check(self, step: int, metrics: dict[str, float]) -> str | None:
        """metrics: this step's scalars (keys with or without the `train/` prefix). Returns a message or None.
        A rule is judged only at the steps that report its signals (a diagnostic computed every
        `trainer.diagnostics_every_steps` steps): its streak counts those checks and is kept, not reset, between
        them."""
        if not self.cfg.enabled:
            return None
        judged = self._judged(metrics)
        holding = {key: message for key, message in judged.items() if message is not None}
        streaks = {name: count for name, count in self.streaks.items() if name not in judged}  # not judged: kept
        streaks.update((name, self.streaks.get(name, 0) + 1) for name in holding)  # judged and not holding: reset
        self.streaks = streaks
        due = [holding[n] for n in holding if streaks[n] % self.cfg.patience_steps == 0]
        if not due:
            return None
        longest = max(streaks[n] for n in holding)
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


# metrics.jsonl names written before the trainer used TensorBoard's names everywhere (read_metrics renames them)
LEGACY_METRIC_NAMES = {"loss": "train/loss", "lr": "train/lr", "samples_per_s": "train/samples_per_s"}


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of run_dir/metrics.jsonl (sslsv.training.loggers), with an interrupted run's lines that its
    resume trained again left out; older runs' `loss`, `lr` and `samples_per_s` read as `train/loss`, `train/lr`
    and `train/samples_per_s`, the names the trainer writes now."""
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
        record = {LEGACY_METRIC_NAMES.get(key, key): value for key, value in record.items()}
        step = record.get("step")
        if step is not None and records and step < records[-1].get("step", step):
            # A resumed run starts again after its last checkpoint: the interrupted run's lines from that step on
            # were superseded, so keep only the resumed run's.
            records = [r for r in records if r.get("step", -1) < step]
        records.append(record)
    return records


def plot_diagnostics(run_dir: str | Path, out_png: str | Path | None = None,
                     reference_lines: dict[str, list[tuple[float, str]]] | None = None) -> Path:
    """Plot the loss and every `train/*` signal of run_dir/metrics.jsonl over steps, one labelled panel each, with
    the run's collapse thresholds as dashed reference lines (run_reference_lines: the trained method's
    `collapse_rules` and the config's `collapse.thresholds`). Returns the PNG path (default
    run_dir/diagnostics.png). `reference_lines` ({signal: [(value, label)]}) replaces the run's own lines."""
    records = read_metrics(run_dir)
    note = None
    if reference_lines is None:
        reference_lines, note = run_reference_lines(run_dir)
    figure = diagnostics_figure(records, reference_lines, f"{run_dir}/metrics.jsonl", note)
    out = Path(out_png) if out_png else Path(run_dir) / "diagnostics.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110, bbox_inches="tight", pad_inches=0.1)
    return out


def collapse_reference_lines(rules: Sequence[CollapseRule], thresholds: dict[str, float | None],
                             entropy_bounds: dict[str, float] | None = None) -> dict[str, list[tuple[float, str]]]:
    """{signal: [(value, label)]}: where each rule that compares one signal with one value draws its line.
    `Below` / `Above`: the threshold; `NearMaximum`: ratio x the signal's bound (only when `entropy_bounds` has
    it). Rules switched off (None) and `Compound` rules (a test over several signals, no single line) draw none."""
    from sslsv.methods.collapse import Above, Below, NearMaximum

    lines: dict[str, list[tuple[float, str]]] = {}
    for rule in rules:
        if isinstance(rule, Below):  # Above too
            value = thresholds.get(rule.threshold.name)
            if value is not None:
                sign = ">" if isinstance(rule, Above) else "<"
                lines.setdefault(rule.signal, []).append((float(value), f"collapse if {sign} {value:g} "
                                                          f"({rule.threshold.name})"))
        elif isinstance(rule, NearMaximum):
            ratio, bound = thresholds.get(rule.threshold.name), (entropy_bounds or {}).get(rule.signal)
            if ratio is not None and bound:
                lines.setdefault(rule.signal, []).append((float(ratio * bound), f"collapse if >= {ratio:g} x max "
                                                          f"{bound:.3g} (uniform)"))
    return lines


def run_reference_lines(run_dir: str | Path) -> tuple[dict[str, list[tuple[float, str]]], str | None]:
    """The collapse reference lines of a run (collapse_reference_lines of its method's rules with its config's
    thresholds; entropy bounds from `entropy_bounds` in training_summary.json when the trainer wrote them), and a
    note saying why there are none (no or unreadable config.yml, unknown method)."""
    from sslsv.config import ConfigError
    from sslsv.registry import METHODS
    from sslsv.runs import RunError, load_run_config

    layout = RunLayout(run_dir)
    if not layout.config.is_file():
        return {}, "no collapse thresholds drawn: no config.yml"
    try:
        config = load_run_config(run_dir)
        rules = METHODS.get(config.method.name).obj.collapse_rules
        thresholds = resolve_thresholds(rules, config.collapse.thresholds)
    except (RunError, ConfigError, KeyError, ValueError) as error:
        return {}, f"no collapse thresholds drawn: {error}"
    bounds = {}
    if layout.summary.is_file():
        try:
            bounds = json.loads(layout.summary.read_text()).get("entropy_bounds") or {}
        except (OSError, ValueError, AttributeError):
            bounds = {}
    return collapse_reference_lines(rules, thresholds, bounds), None


def diagnostics_figure(records: list[dict], reference_lines: dict[str, list[tuple[float, str]]] | None = None,
                       source: str = "metrics", note: str | None = None):
    """The figure of plot_diagnostics: a grid (three columns) of one panel per signal, step on x, the signal on y
    (log scale when it and its reference lines are positive and span more than two decades), reference lines
    dashed in red with their legend in the panel. Threshold lines of signal `s` go on panel `train/s` (or `s`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    reference_lines = reference_lines or {}
    names = ["loss"] if any("loss" in r for r in records) else []
    for record in records:
        for key in record:
            if key.startswith("train/") and key not in names:
                names.append(key)
    if not names:
        raise ValueError(f"{source}: no loss or train/* signal to plot")
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    figure = Figure(figsize=(4.5 * cols, 3.2 * rows))
    FigureCanvasAgg(figure)
    for i, name in enumerate(names):
        axis = figure.add_subplot(rows, cols, i + 1)
        signal = name.removeprefix("train/")
        points = [(r["step"], r[name]) for r in records if name in r and isinstance(r[name], (int, float))]
        values = []
        if points:
            steps, values = zip(*points)
            axis.plot(steps, values, linewidth=1.2, color="tab:blue")
        lines = reference_lines.get(signal, [])
        for value, label in lines:
            axis.axhline(value, color="tab:red", linestyle="--", linewidth=1.0, label=label,
                         gid=f"collapse-threshold:{signal}")
        shown = [v for v in list(values) + [v for v, _ in lines] if math.isfinite(v)]
        if shown and min(shown) > 0 and max(shown) / min(shown) > 100:
            axis.set_yscale("log")
        else:
            axis.yaxis.set_major_locator(MaxNLocator(nbins=5))
        axis.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.set_ylabel(signal, fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
        if lines:
            axis.legend(fontsize=6, loc="best")
    if note:
        figure.suptitle(note, fontsize=8, color="dimgray")
    figure.tight_layout()
    return figure
