"""The session's targets in the order they were added: ids, unique names, which ones have a mask (no Qt, no
torch). The targets with a positive click get label values 1, 2, ... in this order."""

from __future__ import annotations

import itertools

from sammoe.errors import ConfigError
from sammoe.napari.views import SessionTarget


class TargetList:
    def __init__(self) -> None:
        self.items: list[SessionTarget] = []
        self._ids = itertools.count(1)

    def clear(self) -> None:
        self.items = []

    def add(self, name: str | None = None) -> SessionTarget:
        id_ = next(self._ids)
        target = SessionTarget(id_, self._free_name(name or f"target_{id_}"))
        self.items.append(target)
        return target

    def rename(self, id_: int, name: str) -> None:
        name = name.strip()
        if not name:
            raise ConfigError("a target needs a name")
        target = self.get(id_)
        if any(t.name == name and t is not target for t in self.items):
            raise ConfigError(f"a target named {name!r} exists already; choose another name")
        target.name = name

    def remove(self, target: SessionTarget) -> None:
        self.items.remove(target)

    def get(self, id_: int) -> SessionTarget:
        for t in self.items:
            if t.id == id_:
                return t
        raise ConfigError(f"no target with id {id_}; it was deleted")

    def unlocked(self, id_: int, verb: str) -> SessionTarget:
        """The target, unless the user locked it (its voxels are theirs until they unlock it)."""
        target = self.get(id_)
        if target.locked:
            raise ConfigError(f"target {target.name!r} is locked (your edits are kept); unlock it to {verb}")
        return target

    def active(self) -> list[SessionTarget]:
        """The targets with a positive click, in label order."""
        return [t for t in self.items if t.active]

    def values(self) -> dict[int, int]:
        """Target id -> label value (targets with a mask only)."""
        return {t.id: v for v, t in enumerate(self.active(), start=1)}

    def _free_name(self, name: str) -> str:
        taken = {t.name for t in self.items}
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            candidate = f"{name}_{n}"
        return candidate
