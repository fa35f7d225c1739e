"""Name -> class registries for every pluggable component.

Modelled on lm-evaluation-harness (`register_model("hf")`) and mmengine
(`REGISTRY.build(dict(type=..., **kw))`): a component is added by writing one class and
one decorator, selected by name in YAML, and an unknown name fails with the list of valid
names so that a typo in a config is a one-line fix.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from harness.core.errors import HarnessError

T = TypeVar("T")


class RegistryError(HarnessError, KeyError):
    """An unknown or duplicate name; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


REGISTRIES: dict[str, Registry[Any]] = {}  # every registry by kind: what `granalign ls` lists


class Registry(Generic[T]):
    """A plain dict from names to classes (or functions), with helpful errors.

    `doc` says in one line what the registry's components are (`granalign ls` shows it).
    """

    def __init__(self, kind: str, base: type | str | None = None, doc: str = "") -> None:
        if kind in REGISTRIES:
            raise RegistryError(f"a registry of {kind!r} exists already")
        self.kind = kind
        self._base = base  # a class, or "module:Class" resolved on first use
        self.doc = doc
        self._items: dict[str, T] = {}
        REGISTRIES[kind] = self

    @property
    def base(self) -> type | None:
        """The class every member must subclass (None: any object)."""
        if isinstance(self._base, str):
            module, _, name = self._base.partition(":")
            self._base = getattr(importlib.import_module(module), name)
        return self._base

    def register(self, *names: str, force: bool = False) -> Callable[[T], T]:
        """Decorator: add the decorated object under one or more names."""
        if not names:
            raise ValueError(f"{self.kind} registry: register() needs at least one name")

        def deco(obj: T) -> T:
            if self.base is not None and isinstance(obj, type) and not issubclass(obj, self.base):
                raise TypeError(
                    f"{self.kind} registry: {obj.__name__} must subclass {self.base.__name__}"
                )
            for name in names:
                if name in self._items and not force and self._items[name] is not obj:
                    raise RegistryError(f"{self.kind} registry: {name!r} is already registered")
                self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted(self._items)) or "(none registered)"
            raise RegistryError(f"unknown {self.kind} {name!r}; valid names: {valid}") from None

    def build(self, spec: str | Mapping[str, Any], **defaults: Any) -> Any:
        """Instantiate from a name or a `dict(type=name, **kwargs)` (mmengine style)."""
        if isinstance(spec, str):
            kwargs: dict[str, Any] = dict(defaults)
            name = spec
        else:
            kwargs = {**defaults, **spec}
            if "type" not in kwargs:
                raise RegistryError(f"{self.kind} spec needs a 'type' key, got {dict(spec)!r}")
            name = kwargs.pop("type")
        return self.get(name)(**kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        return sorted(self._items)

    def in_order(self) -> list[str]:
        """The names in the order they were registered."""
        return list(self._items)

    def describe(self, name: str) -> str:
        """One line on what `name` is: its docstring's first line, else its value."""
        obj = self.get(name)
        doc = getattr(obj, "__doc__", None) if callable(obj) else None
        if doc and doc.strip():
            return " ".join(doc.strip().split("\n\n")[0].split())
        describe = getattr(obj, "describe", None)
        if callable(describe) and not isinstance(obj, type):
            return str(describe())
        return str(obj)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
