"""Name → object registries.

Methods, models, data sources and recipes are registered by name, so a new one is one new file
with a ``@REGISTRY.register("name")`` decorator (timm's way: the registration sits in the file
that defines the thing); nothing dispatches through if/elif ladders, and no list of modules is
kept by hand: a registry built with ``package=`` imports every module of that package on its first
lookup (:func:`discover`), and an import error there is raised, not skipped.
"""
from __future__ import annotations

import difflib
from typing import Callable, Dict, Generic, Iterator, List, Optional, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of objects of one kind (e.g. "model").

    ``register(name)`` is a decorator; registering a name twice is an error (it would silently
    shadow a method). ``get(name)`` raises :class:`ConfigError` naming the known entries and the
    closest match when the name is unknown.
    """

    def __init__(self, kind: str, loader: Optional[Callable[[], None]] = None, package: Optional[str] = None):
        self.kind = kind
        self._items: Dict[str, T] = {}
        # Called once before the first lookup: imports the modules that register entries,
        # so importing the registry itself stays cheap.
        if package is not None:
            loader = lambda: discover(package)  # noqa: E731
        self._loader = loader
        self._loaded = loader is None
        self._loading = False

    def _ensure_loaded(self) -> None:
        if self._loaded or self._loading:
            return
        self._loading = True  # a module that looks the registry up while it is being loaded sees it as is
        try:
            assert self._loader is not None
            self._loader()
            self._loaded = True  # only after every module imported: a failed import is raised again next time
        finally:
            self._loading = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name``. A class with a ``name`` attribute gets
        ``name`` (so a method states its name once, in the decorator)."""
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.kind} names must be non-empty strings, got {name!r}")

        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"duplicate {self.kind} name {name!r}: already registered to "
                                 f"{self._items[name]!r}")
            if isinstance(obj, type) and hasattr(obj, "name"):
                own = obj.__dict__.get("name", "")
                if own and own != name:
                    raise ValueError(f"{self.kind} {obj.__name__} is registered as {name!r} but sets name = {own!r}")
                obj.name = name
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


def discover(package: str) -> None:
    """Import every module of ``package`` whose name does not start with "_", so that the
    registrations in them run. Import errors propagate: a broken method file is an error."""
    import importlib
    import pkgutil
    pkg = importlib.import_module(package)
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
