"""Hypothesis building blocks shared by the intake fuzz tests: JSON values, and mutations
of a valid document (values replaced, removed or added; bytes cut or spliced)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hypothesis import strategies as st


def json_values(*, samples: Iterable[str] = (), nan: bool = True) -> st.SearchStrategy[Any]:
    """Any JSON value (nested, small); `samples` adds strings the parser cares about."""
    scalars: st.SearchStrategy[Any] = (
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=nan) | st.text(max_size=30)
    )
    listed = list(samples)
    if listed:
        scalars = scalars | st.sampled_from(listed)
    return st.recursive(
        scalars,
        lambda kids: (
            st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4)
        ),
        max_leaves=12,
    )


def slots(node: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) of a JSON tree: places a mutation can hit."""
    out: list[tuple[Any, Any]] = []
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, child in list(items):
        out.append((node, key))
        out.extend(slots(child))
    return out


def mutate(draw: st.DrawFn, doc: Any, *, times: int, values: st.SearchStrategy[Any]) -> None:
    """Replace, remove or add up to `times` values of `doc`, in place."""
    for _ in range(times):
        places = slots(doc)
        if not places:
            return
        container, key = draw(st.sampled_from(places))
        op = draw(st.sampled_from(["replace", "delete", "add"]))
        if op == "replace":
            container[key] = draw(values)
        elif op == "delete":
            del container[key]
        elif isinstance(container, dict):
            container[draw(st.text(max_size=12))] = draw(values)
        else:
            container.append(draw(values))


def garble(draw: st.DrawFn, raw: bytes) -> bytes:
    """`raw` as is, or cut somewhere with a few random bytes spliced in."""
    if draw(st.booleans()):
        return raw
    cut = draw(st.integers(0, len(raw)))
    return raw[:cut] + draw(st.binary(max_size=8)) + raw[cut + draw(st.integers(0, 8)) :]
