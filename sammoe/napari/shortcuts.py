"""The widget's keyboard shortcuts, the keys interactive segmentation tools in napari use (T: positive /
negative, Ctrl+Z: undo, R: reset, M: next object, S: save).

They are bound on the viewer, and on the clicks layer too: napari asks the selected layer's keymap before the
viewer's, and a Points layer binds S itself (select mode). They are bound only while the widget is docked;
undocking gives back what the keys did before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# action -> (napari key, what it does: the tooltip text)
KEYS: dict[str, tuple[str, str]] = {
    "toggle": ("T", "switch plain clicks between positive and negative"),
    "undo": ("Control-Z", "take back the selected target's last click"),
    "reset": ("R", "remove every click of the selected target"),
    "next": ("M", "select the next target (a new one after the last)"),
    "save": ("S", "save the segmentation again (the first time: choose where)"),
}


def key_text(action: str) -> str:
    """The key as napari shows it on this system (Ctrl+Z; Cmd+Z on macOS)."""
    from napari.utils.key_bindings import coerce_keybinding

    return str(coerce_keybinding(KEYS[action][0]))


def tooltip(action: str, text: str | None = None) -> str:
    return f"{text or KEYS[action][1]} ({key_text(action)})"


class Shortcuts:
    """Binds ``actions`` (name -> callable taking no argument) on keymap providers (a viewer, a layer)."""

    def __init__(self, actions: dict[str, Callable[[], Any]]) -> None:
        self._actions = actions
        self._bound: dict[int, tuple[Any, dict[str, Any]]] = {}  # id(provider) -> (provider, replaced)

    def _function(self, action: str) -> Callable[[Any], None]:
        def run(_provider: Any) -> None:  # napari passes the viewer or layer the key was bound on
            self._actions[action]()

        run.__name__ = f"sammoe_{action}"
        return run

    def bind(self, provider: Any) -> None:
        if id(provider) in self._bound:
            return
        replaced = {}
        for action, (key, _) in KEYS.items():
            replaced[key] = provider.bind_key(key, self._function(action), overwrite=True)
        self._bound[id(provider)] = (provider, replaced)

    def unbind(self, provider: Any) -> None:
        """Give the keys back to what they did before ``bind``."""
        _, replaced = self._bound.pop(id(provider), (None, {}))
        for key, before in replaced.items():
            provider.bind_key(key, before, overwrite=True)

    def unbind_all(self) -> None:
        for provider, _ in list(self._bound.values()):
            self.unbind(provider)

    def bound_on(self, provider: Any) -> bool:
        return id(provider) in self._bound
