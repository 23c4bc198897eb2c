"""``@record``: dataclass-style classes that cost nothing to define.

``dataclasses.dataclass`` generates its methods with ``exec`` when a class is defined:
about half a millisecond per class, paid at import on every deploy. The deploy hook
imports two dozen such classes, which made up a fifth of its run time. ``record``
gives the same declaration syntax (annotations, defaults, ``field(default_factory=)``),
understood by type checkers through ``dataclass_transform``, with generic methods
that need no code generation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform

T = TypeVar("T")


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], Any]) -> Any:
    return _Factory(default_factory)


_MISSING = object()


def _fields(cls: type) -> tuple[str, ...]:
    names: list[str] = []
    for klass in reversed(cls.__mro__):
        # the class's own annotations only (inherited ones come from its base in the MRO)
        for name, annotation in klass.__dict__.get("__annotations__", {}).items():  # noqa: RUF063
            if "ClassVar" in str(annotation) or name.startswith("__") or name in names:
                continue
            names.append(name)
    return tuple(names)


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    fields: tuple[str, ...] = self.__record_fields__
    if len(args) > len(fields):
        raise TypeError(f"{type(self).__name__}() takes {len(fields)} arguments, {len(args)} given")
    for name, value in zip(fields, args, strict=False):
        if name in kwargs:
            raise TypeError(f"{type(self).__name__}() got {name!r} twice")
        kwargs[name] = value
    for name in fields:
        if name in kwargs:
            value = kwargs.pop(name)
        else:
            value = getattr(type(self), name, _MISSING)
            if value is _MISSING:
                raise TypeError(f"{type(self).__name__}() missing argument {name!r}")
            if isinstance(value, _Factory):
                value = value.make()
        object.__setattr__(self, name, value)
    if kwargs:
        raise TypeError(f"{type(self).__name__}() got unexpected {', '.join(kwargs)}")
    post = getattr(self, "__post_init__", None)
    if post is not None:
        post()


def _repr(self: Any) -> str:
    inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__record_fields__)
    return f"{type(self).__name__}({inner})"


def _eq(self: Any, other: Any) -> Any:
    if type(other) is not type(self):
        return NotImplemented
    return all(getattr(self, n) == getattr(other, n) for n in self.__record_fields__)


@dataclass_transform(field_specifiers=(field,))
def record(cls: type[T]) -> type[T]:
    cls.__record_fields__ = _fields(cls)  # type: ignore[attr-defined]
    cls.__init__ = _init  # type: ignore[method-assign]
    cls.__repr__ = _repr  # type: ignore[method-assign]
    cls.__eq__ = _eq  # type: ignore[method-assign]
    cls.__hash__ = None  # type: ignore[assignment]
    return cls
