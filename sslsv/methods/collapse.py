"""Collapse rules (review, section 6.1): what a method declares about its own signals (sslsv.methods.signals).

A method lists, in its `collapse_rules` class attribute, which of the signals it logs are watched and when each one
means a collapse. A rule names the signals it reads, the thresholds it compares them with (each with a default
that `collapse.thresholds.<name>` overrides) and what a hit means. The collapse detector
(sslsv.training.diagnostics) only applies the rules it is given; it knows no signal by name.

Kinds of rule:

- `Below` / `Above`: one signal under / over a threshold.
- `NearMaximum`: an entropy at or above a fraction of its maximum (the method's `entropy_bounds[signal]`, e.g.
  log of the number of candidates): a uniform distribution.
- `Compound`: any test over several signals and thresholds, given as a function (e.g. DINO's information ratio).

A rule whose signals (or bound) are missing from a step is skipped, and its streak is kept until a step reports them
again (`effective_rank` is computed every `trainer.diagnostics_every_steps` steps: its patience counts those steps);
a threshold set to None switches its rule off.

The review: T. Lepage, R. Dehak, "Self-Supervised Learning for Speaker Recognition: A study and review",
2026, arXiv:2602.10829 (docs/references.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from sslsv.config import ConfigError


@dataclass(frozen=True)
class Threshold:
    """A named, overridable threshold. `valid` (with `requirement`, the words of the error) restricts its values."""

    name: str
    default: float | None  # None: the rule is off unless the config sets a value
    valid: Callable[[float], bool] | None = None
    requirement: str = ""


class CollapseRule:
    """Base class. `key` names the rule in the detector (unique within a method); `signals` are read without the
    `train/` prefix; `holds` returns the explanation of a hit, or None."""

    key: str
    signals: tuple[str, ...]
    thresholds: tuple[Threshold, ...]
    explanation: str

    def holds(self, values: dict[str, float], bounds: dict[str, float],
              thresholds: dict[str, float | None]) -> str | None:
        raise NotImplementedError


@dataclass(frozen=True)
class Below(CollapseRule):
    """`signal` < threshold. `label` and `fmt` write the value into the message."""

    signal: str
    threshold: Threshold
    explanation: str
    label: str = ""
    fmt: str = ".3g"

    @property
    def key(self) -> str:
        return self.threshold.name

    @property
    def signals(self) -> tuple[str, ...]:
        return (self.signal,)

    @property
    def thresholds(self) -> tuple[Threshold, ...]:
        return (self.threshold,)

    def _hit(self, value: float, limit: float) -> bool:
        return value < limit

    _sign = "<"

    def holds(self, values, bounds, thresholds):
        limit = thresholds[self.threshold.name]
        value = values[self.signal]
        if limit is None or not self._hit(value, limit):
            return None
        return f"{self.label or self.signal} {value:{self.fmt}} {self._sign} {limit:g}: {self.explanation}"


@dataclass(frozen=True)
class Above(Below):
    """`signal` > threshold."""

    _sign = ">"

    def _hit(self, value: float, limit: float) -> bool:
        return value > limit


# Uniform collapse: an entropy within 0.5 % of its maximum (e.g. MoCo without negatives -> log|Q|, DINO without
# sharpening -> log(out_dim)). Not lower: a healthy MoCo demo run sits at up to 0.993 of log(|Q| + 1).
MAX_ENTROPY_RATIO = Threshold("max_entropy_ratio", 0.995, lambda v: 0 < v <= 1, "must be in (0, 1]")


@dataclass(frozen=True)
class NearMaximum(CollapseRule):
    """Entropy `signal` >= ratio x its maximum `bounds[signal]` (uniform distribution). Skipped without a bound."""

    signal: str
    threshold: Threshold = MAX_ENTROPY_RATIO
    explanation: str = ("uniform distribution (informational collapse: constant embeddings, no negatives, "
                        "temperature too high or no sharpening)")

    @property
    def key(self) -> str:
        return f"{self.signal}_near_maximum"

    @property
    def signals(self) -> tuple[str, ...]:
        return (self.signal,)

    @property
    def thresholds(self) -> tuple[Threshold, ...]:
        return (self.threshold,)

    def holds(self, values, bounds, thresholds):
        ratio, bound, value = thresholds[self.threshold.name], bounds.get(self.signal), values[self.signal]
        if ratio is None or not bound or bound <= 0 or value < ratio * bound:
            return None
        return f"{self.signal} {value:.3f} is within {1 - ratio:.1%} of its maximum {bound:.3f}: {self.explanation}"


@dataclass(frozen=True)
class Compound(CollapseRule):
    """A test over several signals: `test(values, bounds, thresholds)` returns the message of a hit, or None.
    It is called only when every signal is present and no threshold is None."""

    key: str
    signals: tuple[str, ...]
    thresholds: tuple[Threshold, ...]
    test: Callable[[dict[str, float], dict[str, float], dict[str, float]], str | None]
    explanation: str

    def holds(self, values, bounds, thresholds):
        if any(thresholds[t.name] is None for t in self.thresholds):
            return None
        return self.test(values, bounds, thresholds)


# The two signals every method logs through `method_metrics` (the base class's default rules). Healthy embeddings
# have a std of about 1/sqrt(D) (0.044 at D = 512); an effective rank near 1 means embeddings on (about) a line.
EMBEDDING_STD = Below("embedding_std", Threshold("min_embedding_std", 0.002),
                      "embeddings are almost constant (complete collapse)", label="embedding std", fmt=".2e")
EFFECTIVE_RANK = Below("effective_rank", Threshold("min_effective_rank", 1.5),
                       "embeddings span about one direction (dimensional collapse)", label="effective rank", fmt=".2f")
DEFAULT_RULES: tuple[CollapseRule, ...] = (EMBEDDING_STD, EFFECTIVE_RANK)


def resolve_thresholds(rules: tuple[CollapseRule, ...] | list[CollapseRule],
                       overrides: dict[str, float | None]) -> dict[str, float | None]:
    """Every threshold of `rules` by name: its default, or the config's value (`collapse.thresholds`).

    Raises ConfigError for a name no rule declares (listing the valid ones), a value a threshold refuses, two
    rules with the same key, or one threshold name declared with two different defaults."""
    declared: dict[str, Threshold] = {}
    keys: set[str] = set()
    for rule in rules:
        if rule.key in keys:
            raise ValueError(f"two collapse rules named '{rule.key}'")
        keys.add(rule.key)
        for threshold in rule.thresholds:
            if threshold.name in declared and declared[threshold.name].default != threshold.default:
                raise ValueError(f"collapse threshold '{threshold.name}' declared with two defaults")
            declared[threshold.name] = threshold
    for name in overrides:
        if name not in declared:
            valid = ", ".join(sorted(declared)) or "none"
            raise ConfigError(f"collapse.thresholds.{name}: not a threshold of this method's collapse rules "
                              f"(valid: {valid})")
    values = {name: overrides.get(name, t.default) for name, t in declared.items()}
    for name, value in values.items():
        valid = declared[name].valid
        if value is not None and (not math.isfinite(value) or (valid is not None and not valid(value))):
            raise ConfigError(f"collapse.thresholds.{name}: {value!r} {declared[name].requirement or 'is invalid'}")
    return values

# Cluster usage (DeepCluster, SwAV): every sample in a few clusters.
CLUSTER_ENTROPY = Below("cluster_entropy", Threshold("min_cluster_entropy", 0.5),
                        "almost every sample falls in one cluster", label="cluster usage entropy", fmt=".3f")
