"""The tiny example configurations that encoder families register (`example=` in sslsv.registry), as tests use them.

A family is a registered encoder that declares an example. A preset (ecapa_tdnn_c512, redimnet_b3, ...) declares
none and is covered by the family it is a preset of: the family that builds the same encoder class, or whose config
class its config extends. An encoder that is neither has no test and is reported by `uncovered_encoders`.
"""
from __future__ import annotations

import json
import typing

from sslsv.registry import ENCODERS, Entry


def families() -> list[Entry]:
    """Every registered encoder entry that declares an example, sorted by name."""
    return [entry for entry in ENCODERS.entries() if entry.example is not None]


def example_overrides(name: str) -> list[str]:
    """`encoder.name=<name>` and the entry's example as dotted overrides (values written as JSON, which is YAML)."""
    example = ENCODERS.get(name).example
    if example is None:
        raise ValueError(f"encoder '{name}' registers no example")
    return [f"encoder.name={name}"] + [f"{section}.{key}={json.dumps(value)}"
                                       for section, options in example.items() for key, value in options.items()]


def example_embed_dim(name: str) -> int:
    return ENCODERS.get(name).example["encoder"]["embed_dim"]


def built_class(entry: Entry) -> type:
    """The encoder class an entry builds: the class itself, or its factory's return annotation."""
    if isinstance(entry.obj, type):
        return entry.obj
    return typing.get_type_hints(entry.obj)["return"]


def family_of(entry: Entry, candidates: list[Entry]) -> Entry | None:
    """The family that covers `entry` (itself when it declares an example), or None."""
    if entry.example is not None:
        return entry
    cls = built_class(entry)
    for family in candidates:
        same_class = built_class(family) is cls
        extends_config = (entry.config is not None and family.config is not None
                          and issubclass(entry.config, family.config))
        if same_class or extends_config:
            return family
    return None


def uncovered_encoders() -> list[str]:
    """Registered encoders that neither declare an example nor are a preset of a family that does."""
    covered_by = families()
    return [entry.name for entry in ENCODERS.entries() if family_of(entry, covered_by) is None]
