"""The registry of one extension point: its entries by name, and the params sections they own.

kdflow has four extension points, each one module holding its registry and every entry in it:
dataset sources (``kdflow.sources``), architecture families (``kdflow.architectures``), view
kinds (``kdflow.views``) and distillation methods (``kdflow.losses``). An entry holds its name,
its params section (a pydantic model with defaults, or none), and its function or builder; the
module composes the params sections of all its entries into the sections of params.yaml it
owns (``sections``). Those modules import no TensorFlow at import time, so params are checked
before any stage starts TensorFlow. docs/extending.md shows how to add an entry.
"""

from __future__ import annotations

import functools
from typing import Callable, Generic, Iterator, Protocol, TypeVar

from kdflow.errors import KdflowError


class Named(Protocol):
    name: str


E = TypeVar("E", bound=Named)


class Registry(Generic[E]):
    """The entries of one extension point, in the order they were added.

    ``key`` is the param that names an entry (``views.kind``); ``compose`` builds, from the
    entries, the params sections the extension point owns (top-level key -> pydantic model);
    ``distilled_only``: changing any of those sections changes only the distilled students
    (what the recipe search needs to know, kdflow.search)."""

    def __init__(self, kind: str, key: str, compose: Callable[["Registry[E]"], dict[str, type]],
                 distilled_only: bool = False):
        self.kind, self.key, self.distilled_only = kind, key, distilled_only
        self._compose = compose
        self._entries: dict[str, E] = {}

    def add(self, entry: E) -> E:
        if entry.name in self._entries:
            raise ValueError(f"{self.kind} {entry.name!r} is registered twice")
        if "sections" in self.__dict__:
            raise ValueError(f"{self.kind} {entry.name!r}: add entries before the params sections are composed")
        self._entries[entry.name] = entry
        return entry

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __getitem__(self, name: str) -> E:
        try:
            return self._entries[name]
        except KeyError:
            raise KdflowError(f"{self.key} = {name!r}: not a {self.kind}; one of {', '.join(self._entries)}") from None

    def __iter__(self) -> Iterator[E]:
        return iter(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    @functools.cached_property
    def sections(self) -> dict[str, type]:
        """The params sections this extension point owns, composed from its entries (once)."""
        return self._compose(self)

    def __repr__(self) -> str:
        return f"<{self.kind} registry: {', '.join(self._entries)}>"
