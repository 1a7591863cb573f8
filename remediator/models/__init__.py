"""Pure values that flow through remediator: Alert, Rule, Decision. No I/O here."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, TypeVar

_T = TypeVar("_T")

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform

    @dataclass_transform(frozen_default=True)
    def value(cls: type[_T]) -> type[_T]:
        """A frozen dataclass, as far as the type checker is concerned."""

else:

    def value(cls: type[_T]) -> type[_T]:
        """A value built on the hot path, once or more per decision: a slotted dataclass,
        equal and hashable by its fields like a frozen one, and read-only to mypy --strict
        (an assignment to a field is a type error). Not frozen at run time: a frozen
        dataclass's __init__ pays an `object.__setattr__` per field, which made these
        values' constructors 9% of the CPU time per alert under load (README.md,
        Performance)."""
        return dataclasses.dataclass(slots=True, unsafe_hash=True)(cls)
