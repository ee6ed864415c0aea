"""One registry for everything chosen by name: codecs, metrics, policies, models.

A :class:`Registry` maps names to constructors (classes or factory functions),
as timm's ``create_model``/``list_models`` and CompressAI's registries do::

    CODECS = Registry("codec", CodecError)

    @CODECS.register("vvc")                  # the name, given once, is set on the class
    class VvcCodec(BlockCodec): ...

    CODECS.register("vvc-slow", preset="slow")(VvcCodec)   # bound keyword arguments

    CODECS.create("vvc", preset="medium")    # keyword arguments reach the constructor
    CODECS.names("hevc*")                    # ['hevc', 'hevc-lossless', 'hevc-x265']

An unknown name raises the registry's error class (a :class:`~cfqa_core.errors.CfqaError`)
with one line naming it and the known names; registering a name twice is a
programming error (``ValueError``). numpy-first: nothing here imports torch.
"""
from __future__ import annotations

import fnmatch
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from cfqa_core.errors import CfqaError

T = TypeVar("T")
C = TypeVar("C")
_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _names_itself(obj: Any) -> bool:
    """True for a class with a ``name`` attribute or annotation (it is told its registered name)."""
    if not isinstance(obj, type):
        return False
    return hasattr(obj, "name") or any("name" in vars(k).get("__annotations__", {}) for k in obj.__mro__)


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    return (isinstance(a, functools.partial) and isinstance(b, functools.partial)
            and a.func is b.func and a.args == b.args and a.keywords == b.keywords)


class Registry(Generic[T]):
    """Names -> constructors of one kind of thing (``kind`` is its name in messages).

    ``error`` is the :class:`~cfqa_core.errors.CfqaError` subclass raised for an
    unknown name. ``entries`` is the live ``{name: constructor}`` dict, for the
    modules that expose it under an older name (``POLICIES``, ``METRICS``).
    """

    def __init__(self, kind: str, error: type[CfqaError] = CfqaError) -> None:
        self.kind = kind
        self.error = error
        self.entries: dict[str, T] = {}

    def register(self, name: str | None = None, **defaults: Any) -> Callable[[C], C]:
        """Decorator: register a class or factory under ``name`` (default: its ``__name__``).

        Without ``defaults`` a class with a ``name`` attribute (or annotation) gets
        ``name`` set on it, so the name is written once, in the decorator. With
        ``defaults`` the entry is the constructor with those keyword arguments bound
        (``create`` may still override them) and the class is left as it is: one
        class can stand under many names that way. Any other object (e.g. a metric
        spec) is registered as it is. The decorated object is returned unchanged.
        """

        def wrap(obj: C) -> C:
            key = name if name is not None else getattr(obj, "__name__", None)
            if not isinstance(key, str) or not key:
                raise ValueError(f"{self.kind} {obj!r} needs a name to be registered under")
            entry: Any = functools.partial(obj, **defaults) if defaults else obj
            if key in self.entries:
                if _same(self.entries[key], entry):
                    return obj  # the same registration again (a module imported twice)
                raise ValueError(f"{self.kind} '{key}' registered twice")
            if not defaults and _names_itself(obj):
                other = next((k for k, v in self.entries.items() if v is obj), None)
                if other is not None:
                    raise ValueError(f"{self.kind} class {obj.__qualname__} is already registered as '{other}'; "
                                     f"register it under '{key}' with bound keyword arguments instead")
                obj.name = key  # type: ignore[attr-defined]
            self.entries[key] = entry
            return obj

        return wrap

    def unknown(self, name: Any) -> CfqaError:
        """The one-line error for an unknown ``name``, naming the known ones."""
        return self.error(f"unknown {self.kind} '{name}' (known: {', '.join(self.names()) or 'none'})")

    def get(self, name: str) -> T:
        """The constructor registered as ``name`` (the registry's error class if unknown)."""
        try:
            return self.entries[name]
        except (KeyError, TypeError):
            raise self.unknown(name) from None

    def create(self, name: str, **kwargs: Any) -> Any:
        """A new object from the constructor registered as ``name``, called with ``kwargs``.

        Keyword arguments the constructor does not take raise the registry's error
        class, naming the ones it does take.
        """
        ctor: Any = self.get(name)
        try:
            signature = inspect.signature(ctor)
        except (TypeError, ValueError):  # no introspectable signature: let the call decide
            return ctor(**kwargs)
        try:
            signature.bind(**kwargs)
        except TypeError as exc:
            takes = [p.name for p in signature.parameters.values() if p.kind in _KEYWORD_KINDS]
            raise self.error(f"{self.kind} '{name}': {exc} (takes: {', '.join(takes) or 'nothing'})") from None
        return ctor(**kwargs)

    def names(self, filter: str | None = None) -> list[str]:
        """Registered names in sorted order; ``filter`` is an fnmatch pattern such as ``"hevc*"``."""
        names = sorted(self.entries)
        if filter is None:
            return names
        return [n for n in names if fnmatch.fnmatchcase(n, filter)]

    def __contains__(self, name: object) -> bool:
        try:
            return name in self.entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"
