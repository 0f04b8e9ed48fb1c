"""Name → object registries.

Methods, models, data sources and recipes are registered by name, so a new one is one new
file with a ``@REGISTRY.register("name")`` decorator; nothing dispatches through if/elif ladders.
"""
from __future__ import annotations

import difflib
from typing import Callable, Dict, Generic, Iterator, List, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of objects of one kind (e.g. "model").

    ``register(name)`` is a decorator; registering a name twice is an error (it would silently
    shadow a method). ``get(name)`` raises :class:`ConfigError` naming the known entries and the
    closest match when the name is unknown.
    """

    def __init__(self, kind: str, loader: Callable[[], None] | None = None):
        self.kind = kind
        self._items: Dict[str, T] = {}
        # Called once before the first lookup: imports the modules that register entries,
        # so importing the registry itself stays cheap.
        self._loader = loader
        self._loaded = loader is None

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True
            assert self._loader is not None
            self._loader()

    def register(self, name: str) -> Callable[[T], T]:
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.kind} names must be non-empty strings, got {name!r}")

        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"duplicate {self.kind} name {name!r}: already registered to "
                                 f"{self._items[name]!r}")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        self._ensure_loaded()
        try:
            return self._items[name]
        except KeyError:
            known = sorted(self._items)
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: "
                              f"{', '.join(known) or '(none)'}") from None

    def names(self) -> List[str]:
        self._ensure_loaded()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._ensure_loaded()
        return len(self._items)
