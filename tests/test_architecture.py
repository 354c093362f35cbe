"""The import rules of docs/architecture.md, checked on every module of the package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sammoe"

# module prefix -> sammoe modules it may import (prefix match); the first matching rule applies
RULES: list[tuple[str, tuple[str, ...]]] = [
    ("sammoe.errors", ()),
    ("sammoe.files", ("sammoe.errors",)),
    ("sammoe.devices", ("sammoe.errors",)),
    ("sammoe.hub", ("sammoe.errors", "sammoe.files")),
    ("sammoe.model", ("sammoe.model", "sammoe.errors")),
    ("sammoe.data.datamodule", ("sammoe.data", "sammoe.errors", "sammoe.files", "sammoe.interact.roi")),
    ("sammoe.data", ("sammoe.data", "sammoe.errors", "sammoe.files")),
    # the click loops and the ROI policy: pure torch, used by sammoe.lit and the Predictor (test below)
    ("sammoe.interact", ("sammoe.interact", "sammoe.data.preprocess", "sammoe.data.clicks", "sammoe.data.io",
                         "sammoe.model", "sammoe.eval.metrics", "sammoe.eval.results", "sammoe.errors")),
    ("sammoe.segmentation", ("sammoe.data.io", "sammoe.interact.roi", "sammoe.errors")),
    ("sammoe.loading", ("sammoe.loading", "sammoe.model", "sammoe.errors", "sammoe.files", "sammoe.assets", "sammoe.hub",
                        "sammoe.plugins.discovery")),
    ("sammoe.plugins", ("sammoe.plugins", "sammoe.loading", "sammoe.model", "sammoe.errors", "sammoe.files",
                        "sammoe.assets", "sammoe")),
    ("sammoe.infer", ("sammoe.data", "sammoe.interact", "sammoe.model", "sammoe.loading", "sammoe.segmentation",
                      "sammoe.errors", "sammoe.assets", "sammoe.devices", "sammoe.hub")),
    ("sammoe.eval", ("sammoe.eval", "sammoe.data", "sammoe.files", "sammoe.errors", "sammoe.infer")),
    # the viewer plugin sits on the Predictor's public API; nothing in sammoe imports it (test below)
    ("sammoe.napari", ("sammoe.napari", "sammoe.infer", "sammoe.segmentation", "sammoe.data", "sammoe.errors",
                       "sammoe.files", "sammoe.hub", "sammoe.plugins.discovery")),
]  # fmt: skip


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path


def _imports(path: Path, name: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sammoe")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                base = name.split(".")[: -node.level] if path.name != "__init__.py" else name.split(".")
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("sammoe"):  # `from sammoe import assets` is an import of sammoe.assets
                found |= {f"{module}.{a.name}" for a in node.names}
    return found


def _allowed(module: str, target: str, allowed: tuple[str, ...]) -> bool:
    if target == "sammoe":  # the version string
        return "sammoe" in allowed or target == module
    return any(target == a or target.startswith(a + ".") for a in allowed if a != "sammoe")


@pytest.mark.parametrize("name,path", list(_modules()), ids=lambda v: str(v) if isinstance(v, str) else "")
def test_module_imports_follow_the_layers(name, path):
    rule = next(
        (allowed for prefix, allowed in RULES if name == prefix or name.startswith(prefix + ".")), None
    )
    if rule is None:
        return  # lit, cli, demo, segment_cli: the top layers may import everything
    bad = sorted(
        t
        for t in _imports(path, name)
        if not _allowed(name, t, rule) and not any(t.startswith(m) for m in (name,))
    )
    # `from sammoe.data.io import Volume` also lists sammoe.data.io.Volume: judge the module, not the symbol
    bad = [t for t in bad if not _allowed(name, t.rsplit(".", 1)[0], rule)]
    assert not bad, f"{name} imports {bad}; see docs/architecture.md"


def test_only_loading_reads_weights_and_only_files_writes():
    """Model weights are read in sammoe.loading (plugin weight files, sha256-checked, in plugins.weights;
    checkpoints to package, with their metadata, in plugins.scaffold); user-facing outputs are written through
    sammoe.files (the preprocessing cache, generated phantom datasets and packaged plugin folders are built
    in a temp folder of their own and renamed; the demo and its example plugins write into the demo's run
    folder)."""
    readers = ("safetensors.torch import load", "safe_open(", "torch.load(")
    writers = ("os.replace(", ".write_text(", ".write_bytes(", "nib.save(", "np.save(", "save_file(")
    own_readers = ("sammoe.loading", "sammoe.plugins.weights", "sammoe.plugins.scaffold")
    own_writers = ("sammoe.files", "sammoe.data.cache", "sammoe.data.phantoms", "sammoe.demo", "sammoe.examples",
                   "sammoe.plugins.scaffold", "sammoe.plugins.testing")  # fmt: skip
    for name, path in _modules():
        text = path.read_text(encoding="utf-8")
        if not name.startswith(own_readers):
            assert not any(r in text for r in readers), f"{name} reads weights; go through sammoe.loading"
        if name not in own_writers:  # a writer handed to files.write_file on the same line is that path
            lines = [line for line in text.splitlines() if "write_file(" not in line]
            assert not any(w in line for line in lines for w in writers), (
                f"{name} writes files; use sammoe.files"
            )


def test_nothing_below_the_top_imports_lightning_or_napari():
    """Lightning only in the training layer (and the LightningDataModule); napari only in its plugin."""
    for name, path in _modules():
        if name.startswith(("sammoe.lit", "sammoe.napari")) or name == "sammoe.data.datamodule":
            continue
        text = path.read_text(encoding="utf-8")
        for heavy in ("import lightning", "from lightning", "import napari", "from napari"):
            assert heavy not in text, f"{name} uses {heavy!r}: only sammoe.lit may"


def test_interact_uses_neither_lit_nor_lightning():
    """The interaction code is shared by the LightningModules and the Predictor: no `sammoe.interact` module
    imports `sammoe.lit` or Lightning, not even through another module (checked in a fresh interpreter)."""
    modules = [name for name, _ in _modules() if name.startswith("sammoe.interact.")]
    assert {f"sammoe.interact.{m}" for m in ("rollout", "crop_evaluation", "roi")} <= set(modules)
    for name, path in _modules():
        if name.startswith("sammoe.interact"):
            lit = sorted(t for t in _imports(path, name) if t == "sammoe.lit" or t.startswith("sammoe.lit."))
            assert not lit, f"{name} imports {lit}: interact sits below sammoe.lit"
    code = (
        f"import sys, {', '.join(modules)}; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', "
        "'lightning_fabric') or m.startswith('sammoe.lit')); "
        "sys.exit(f'loaded {bad}' if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1:]


def test_nothing_imports_the_napari_plugin():
    """The plugin is an optional extra: no sammoe module imports it, and neither `import sammoe` nor the CLI
    loads napari or Qt."""
    from napari_support import gui_loaded_by

    for name, path in _modules():
        if not name.startswith("sammoe.napari"):
            assert not any(t.startswith("sammoe.napari") for t in _imports(path, name)), name
    done = gui_loaded_by("sammoe, sammoe.cli, sammoe.segment_cli")
    assert done.returncode == 0, done.stderr


def test_no_module_grows_past_450_lines():
    """A module that long has taken on a second job; split it by responsibility."""
    long = {
        name: n
        for name, path in _modules()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > 450
    }
    assert not long, long
