"""The house rules of docs/architecture.md: the layers (as import-linter contracts, with no exceptions), who
reads weights and who writes files, the viewer plugin kept optional, and files sized by their job."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sammoe"


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_import_contracts_hold():
    """`lint-imports` checks every import statement (function-level ones too) against the contracts in
    pyproject.toml: the layers, no cycles inside any package, Lightning and napari where they belong."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint is None:
        pytest.fail("import-linter is not installed: pip install -e '.[test]'")
    env = dict(os.environ, PYTHONIOENCODING="utf-8")  # its banner is box-drawing characters
    done = subprocess.run(
        [lint], cwd=ROOT, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_contracts_have_no_exceptions():
    """A contract that ignores imports would hide exactly what it is there to catch."""
    for contract in _contracts():
        assert not contract.get("ignore_imports"), contract["name"]
        assert not contract.get("allow_indirect_imports"), contract["name"]


def test_architecture_page_states_the_checked_layers():
    """docs/architecture.md lists the layers top to bottom in a code block; it must be the contract's list."""
    (layers,) = [c["layers"] for c in _contracts() if c["type"] == "layers"]
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = re.search(r"```text\n(.*?)```", page, re.S)
    assert block, "docs/architecture.md has no ```text block with the layers"
    stated = [
        " | ".join(f"sammoe.{name}" for name in re.findall(r"[a-z_]+", line.split("  ")[0]))
        for line in block.group(1).splitlines()
        if line.strip() and not line.lstrip().startswith(("|", "v", "^"))
    ]
    assert stated == layers, (stated, layers)


def test_every_package_is_in_a_layer():
    """A new top-level package or module must be placed in the layers, or the contract says nothing of it."""
    (layers,) = [c["layers"] for c in _contracts() if c["type"] == "layers"]
    placed = {name.strip() for layer in layers for name in layer.split("|")}
    top = {
        f"sammoe.{p.stem if p.is_file() else p.name}"
        for p in PACKAGE.iterdir()
        if (p.is_file() and p.suffix == ".py" and not p.name.startswith("__"))
        or (p.is_dir() and (p / "__init__.py").exists())
    }
    assert top <= placed, sorted(top - placed)


def test_only_loading_reads_weights_and_only_files_writes():
    """Model weights are read in sammoe.loading (plugin weight files, sha256-checked, in plugins.checksums;
    checkpoints to package through loading.checkpoints); user-facing outputs are written through
    sammoe.files (the preprocessing cache, generated phantom datasets and packaged plugin folders are built
    in a temp folder of their own and renamed; the demo and its example plugins write into the demo's run
    folder)."""
    readers = ("safetensors.torch import load", "safe_open(", "torch.load(")
    writers = ("os.replace(", ".write_text(", ".write_bytes(", "nib.save(", "np.save(", "save_file(")
    own_readers = ("sammoe.loading", "sammoe.plugins.checksums")
    own_writers = (
        "sammoe.files",
        "sammoe.data.cache",
        "sammoe.data.phantoms",
        "sammoe.cli.demo.run",
        "sammoe.cli.demo.colin27",
        "sammoe.cli.demo.plugins",
        "sammoe.publish.project",
        "sammoe.plugins.testing",
    )
    for name, path in _modules():
        text = path.read_text(encoding="utf-8")
        if not name.startswith(own_readers):
            assert not any(r in text for r in readers), f"{name} reads weights; go through sammoe.loading"
        if name not in own_writers:  # a writer of the temp path sammoe.files hands out is that path
            lines = [
                line for line in text.splitlines() if "write_file(" not in line and "lambda tmp:" not in line
            ]
            assert not any(w in line for line in lines for w in writers), (
                f"{name} writes files; use sammoe.files"
            )


def test_interact_loads_no_lightning_even_indirectly():
    """The interaction code is shared by the LightningModules and the Predictor: importing it in a fresh
    interpreter loads neither Lightning nor sammoe.lit."""
    modules = [name for name, _ in _modules() if name.startswith("sammoe.interact.")]
    assert {f"sammoe.interact.{m}" for m in ("rollout", "crop_evaluation", "roi")} <= set(modules)
    code = (
        f"import sys, {', '.join(modules)}; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', "
        "'lightning_fabric') or m.startswith('sammoe.lit')); "
        "sys.exit(f'loaded {bad}' if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1:]


def test_cli_and_package_load_no_gui():
    """The viewer plugin is an optional extra: neither `import sammoe` nor the CLI loads napari or Qt."""
    from helpers.gui import gui_loaded_by

    done = gui_loaded_by("sammoe, sammoe.cli, sammoe.cli.segment")
    assert done.returncode == 0, done.stderr


def test_no_module_grows_past_400_lines():
    """A module that long has taken on a second job; split it by responsibility."""
    long = {
        name: n
        for name, path in _modules()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > 400
    }
    assert not long, long


def test_no_formatter_escapes_and_line_length_is_checked():
    """Files are not squeezed under a limit: no formatter escape comments (`fmt:` skip or off), and ruff's
    E501 is not ignored."""
    marker = re.compile(r"#\s*fmt:\s*(skip|off)")
    found = [
        str(path.relative_to(ROOT))
        for folder in ("sammoe", "tests", "benchmarks", "experts", "docs")
        for path in (ROOT / folder).rglob("*.py")
        if marker.search(path.read_text(encoding="utf-8")) and "build" not in path.parts
    ]
    assert not found, found
    lint = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    assert "E501" not in lint.get("ignore", []) and "E" in lint["select"]
