"""One small registry for every pluggable unit: encoders, methods, poolings, trial sets.

A unit registers itself with a decorator under a lower-snake name, together with the dataclass that types its
config section. Lookups of unknown names fail with the registered names listed and the closest one suggested.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable


class RegistryError(KeyError):
    """An unknown or duplicate registry name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Any            # class or factory
    config: type | None  # dataclass typing the unit's config section (None: no options)


def closest(name: str, candidates: list[str]) -> str | None:
    """The candidate most similar to `name`, or None when nothing is close."""
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    return match[0] if match else None


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, config: type | None = None) -> Callable[[Any], Any]:
        def decorator(obj: Any) -> Any:
            if name in self._entries:
                raise RegistryError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = Entry(name, obj, config)
            return obj

        return decorator

    def get(self, name: str, key: str | None = None) -> Entry:
        if name not in self._entries:
            where = f"{key}: " if key else ""
            hint = closest(name, self.names())
            suggestion = f" Did you mean '{hint}'?" if hint else ""
            raise RegistryError(
                f"{where}unknown {self.kind} '{name}'.{suggestion} Registered {self.kind}s: {', '.join(self.names())}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


ENCODERS = Registry("encoder")
METHODS = Registry("method")
POOLINGS = Registry("pooling")
TRIAL_SETS = Registry("trial set")

ALL = {"encoders": ENCODERS, "methods": METHODS, "poolings": POOLINGS, "trial sets": TRIAL_SETS}


def load_all() -> None:
    """Import every module that registers units, so the registries are complete."""
    import sslsv.data.trials  # noqa: F401
    import sslsv.encoders  # noqa: F401
    import sslsv.methods  # noqa: F401


def describe() -> str:
    load_all()
    lines = []
    for title, registry in ALL.items():
        lines.append(f"{title}:")
        for name in registry.names():
            obj = registry.get(name).obj
            doc = (obj.__doc__ or "").strip().splitlines()
            lines.append(f"  {name:<24} {doc[0] if doc else ''}")
    return "\n".join(lines)
