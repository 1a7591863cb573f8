"""Action types by name. Family modules call `register`; the engine calls `get`."""

from __future__ import annotations

from remediator.actions.base import Action

_ACTIONS: dict[str, Action] = {}


def register(action: Action) -> Action:
    if action.type in _ACTIONS:
        raise RuntimeError(f"action type {action.type!r} registered twice")
    _ACTIONS[action.type] = action
    return action


def get(type_: str) -> Action | None:
    _load_builtin()
    return _ACTIONS.get(type_)


def names() -> list[str]:
    _load_builtin()
    return sorted(_ACTIONS)


_loaded = False


def _load_builtin() -> None:
    # Imported lazily: family modules import this one to register themselves.
    global _loaded  # noqa: PLW0603 - a one-time import guard
    if _loaded:
        return
    _loaded = True
    from remediator.actions import (  # noqa: F401, PLC0415 - imported to register, lazily
        aws,
        builtin,
        docker,
        kubernetes,
        notify,
        postgres,
    )
