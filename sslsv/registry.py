"""One small registry for every pluggable unit: encoders, methods, poolings, trial sets.

A unit registers itself with a decorator under a lower-snake name, together with the dataclass that types its
config section and, optionally, a tiny example configuration that registry-wide tests build and train.
Lookups of unknown names fail with the registered names listed and the closest one suggested.

Discovery is lazy and by name: each registry knows the package whose modules register its units (a string, not
an import), and imports it on the first lookup. So `sslsv.registry` imports nothing of the package and sits at
the bottom of the layer order, while any lookup still sees every built-in unit. Third-party units register
through the `sslsv.<kind>s` entry-point group (e.g. `sslsv.encoders`), imported at the same moment.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
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
    # tiny options (section keys -> values, e.g. {"encoder": {...}, "features": {...}}) that build the unit at
    # test size; registry-wide tests iterate over the entries that declare one
    example: dict | None = field(default=None, compare=False)


def closest(name: str, candidates: list[str]) -> str | None:
    """The candidate most similar to `name`, or None when nothing is close."""
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    return match[0] if match else None


class Registry:
    def __init__(self, kind: str, plugins: str, group: str):
        self.kind = kind
        self.plugins = plugins  # dotted name of the package whose import registers the built-in units
        self.group = group  # entry-point group of third-party units
        self._entries: dict[str, Entry] = {}
        self._discovered = False

    def register(self, name: str, config: type | None = None, example: dict | None = None) -> Callable[[Any], Any]:
        def decorator(obj: Any) -> Any:
            if name in self._entries:
                raise RegistryError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = Entry(name, obj, config, example)
            return obj

        return decorator

    def discover(self) -> None:
        """Import the built-in plugin package and the entry points of the group, once."""
        if self._discovered:
            return
        self._discovered = True  # first: the imports below register into this registry and may look names up
        try:
            importlib.import_module(self.plugins)
            for point in entry_points(group=self.group):
                point.load()
        except BaseException:
            self._discovered = False  # a failed import must not leave a half-filled registry looking complete
            raise

    def get(self, name: str, key: str | None = None) -> Entry:
        self.discover()
        if name not in self._entries:
            where = f"{key}: " if key else ""
            hint = closest(name, self.names())
            suggestion = f" Did you mean '{hint}'?" if hint else ""
            raise RegistryError(
                f"{where}unknown {self.kind} '{name}'.{suggestion} Registered {self.kind}s: {', '.join(self.names())}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        """Every entry, sorted by name."""
        return [self._entries[name] for name in self.names()]

    def __contains__(self, name: str) -> bool:
        self.discover()
        return name in self._entries


ENCODERS = Registry("encoder", "sslsv.encoders", "sslsv.encoders")
METHODS = Registry("method", "sslsv.methods", "sslsv.methods")
POOLINGS = Registry("pooling", "sslsv.encoders", "sslsv.poolings")
TRIAL_SETS = Registry("trial set", "sslsv.data.trials", "sslsv.trial_sets")

ALL = {"encoders": ENCODERS, "methods": METHODS, "poolings": POOLINGS, "trial sets": TRIAL_SETS}


def load_all() -> None:
    """Discover every registry's units now (lookups do it on their own; this is for listings and tests)."""
    for registry in ALL.values():
        registry.discover()


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
