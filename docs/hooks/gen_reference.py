"""MkDocs hook: the reference pages that must match the code, written at build time from the code itself.

- ``reference/cli.md``: every ``sammoe`` command and its options, from the dispatcher table and the argparse
  parsers of ``sammoe.cli`` (the trainer commands are LightningCLI: their options are the shipped configs'
  keys and the training classes' arguments).
- ``reference/configs.md``: every key of every shipped config (``sammoe/configs/*.yaml`` and
  ``experts/*.yaml``) with its value and the comment written beside it.
- ``reference/manifest.md``: the expert plugin manifest's JSON schema, from the pydantic model.

The page builders are plain functions (``cli_markdown``, ``configs_markdown``, ``manifest_markdown``) so that
the tests can run them without MkDocs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
from importlib import import_module
from pathlib import Path
from typing import Any

import yaml

GENERATED = {
    "reference/cli.md": "cli_markdown",
    "reference/configs.md": "configs_markdown",
    "reference/manifest.md": "manifest_markdown",
}
REPO = Path(__file__).resolve().parents[2]
NOTE = "<!-- Generated at build time by docs/hooks/gen_reference.py; edit the code, not this page. -->\n\n"
TRAINER_MODULE = "sammoe.cli.train"
# The classes a config's `model.class_path` / `data.class_path` may name (short names resolve in sammoe.lit).
TRAINING_CLASSES = [
    "sammoe.lit.finetune.ExpertFinetune",
    "sammoe.lit.gate.GateTraining",
    "sammoe.lit.router.RouterTraining",
    "sammoe.lit.datamodule.SegDataModule",
    "sammoe.lit.phantom_data.PhantomDataModule",
]


def on_files(files: Any, config: Any) -> Any:
    """Add the generated pages to the build (MkDocs >= 1.6 ``File.generated``)."""
    from mkdocs.structure.files import File

    for uri, builder in GENERATED.items():
        files.append(File.generated(config, uri, content=globals()[builder]()))
    return files


# ------------------------------------------------------------------------------------------------ helpers
def _cell(text: Any) -> str:
    """Text that is safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text: Any) -> str:
    text = str(text)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


# ------------------------------------------------------------------------------------------------ cli
def _dispatch() -> dict[str, str]:
    return dict(import_module("sammoe.cli.main")._DISPATCH)


def _parser_of(target: str) -> argparse.ArgumentParser:
    """The argparse parser of a dispatcher target ``module:function``: ``_parser()`` of the module that
    defines the function (a package may re-export it), else of the named module."""
    module_name, func_name = target.split(":")
    module = import_module(module_name)
    for candidate in (import_module(getattr(module, func_name).__module__), module):
        if hasattr(candidate, "_parser"):
            return candidate._parser()
    raise RuntimeError(
        f"no argparse _parser() next to {target}; teach docs/hooks/gen_reference.py where it is"
    )


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _option_rows(parser: argparse.ArgumentParser) -> list[tuple[str, list[list[str]]]]:
    """(group title, rows of [option, argument, default, description]) for every group with options."""
    formatter = parser._get_formatter()
    groups = []
    for group in parser._action_groups:
        rows = []
        for action in group._group_actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            names = ", ".join(_code(s) for s in action.option_strings) or _code(action.dest)
            if action.nargs == 0:
                argument = ""
            elif isinstance(action.metavar, tuple):
                argument = " ".join(action.metavar)
            else:
                argument = action.metavar or (
                    "{" + ",".join(map(str, action.choices)) + "}" if action.choices else action.dest.upper()
                )
                if action.nargs in ("*", "+"):
                    argument += " ..."
                elif isinstance(action.nargs, int) and action.nargs > 1:
                    argument = " ".join([argument] * action.nargs)
            default = action.default
            shown = "" if default in (None, False, argparse.SUPPRESS) or action.nargs == 0 else _code(default)
            if action.required and action.nargs not in ("*", "?"):
                shown = "required"
            if isinstance(action, argparse._AppendAction):
                argument += " (repeatable)"
            help_text = formatter._expand_help(action) if action.help else ""
            rows.append([names, _cell(argument), shown, _cell(help_text)])
        if rows:
            groups.append((group.title or "options", rows))
    return groups


def _parser_section(title: str, parser: argparse.ArgumentParser, level: int) -> list[str]:
    out = [f"{'#' * level} {title}", ""]
    if parser.description:
        out += [" ".join(parser.description.split()), ""]
    out += ["```text", parser.format_usage().strip(), "```", ""]
    for group_title, rows in _option_rows(parser):
        out += [f"**{group_title[:1].upper() + group_title[1:]}**", ""]
        out += ["| option | argument | default | description |", "| --- | --- | --- | --- |"]
        out += ["| " + " | ".join(row) + " |" for row in rows]
        out.append("")
    for name, sub in _subparsers(parser).items():
        out += _parser_section(f"{title} {name}", sub, level + 1)
    return out


def cli_markdown() -> str:
    """Every command of the ``sammoe`` dispatcher; argparse commands with all their options."""
    dispatch = _dispatch()
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "110"  # argparse wraps the usage line at the terminal width
    try:
        with contextlib.redirect_stdout(io.StringIO()) as usage:
            import_module("sammoe.cli.main").main(["--help"])
        out = [
            "# Command line",
            "",
            NOTE.strip(),
            "",
            "`sammoe` is one command with subcommands. Errors a user can cause print one line starting with "
            "`sammoe: error:` and exit with status 2; Ctrl-C exits with 130.",
            "",
            "```text",
            usage.getvalue().strip(),
            "```",
            "",
        ]
        trainer = sorted(c for c, target in dispatch.items() if target.split(":")[0] == TRAINER_MODULE)
        for command in sorted(c for c in dispatch if c not in trainer):
            out += _parser_section(f"sammoe {command}", _parser_of(dispatch[command]), 2)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    out += [
        "## Trainer commands: " + ", ".join(f"sammoe {c}" for c in trainer),
        "",
        "These run [LightningCLI](https://lightning.ai/docs/pytorch/stable/cli/lightning_cli.html) over the "
        "sammoe training classes. Their options are the keys of a config: `--config FILE` (repeatable; later "
        "files override earlier ones; a bare name such as `gate` or `experts/spinal_cord` finds the config "
        "shipped in the package), any key on the command line (`--trainer.max_epochs=3`, "
        "`--model.init_args.lr=1e-4`, `--data.init_args.roots='[/data/Dataset001_X]'`), `--print_config` "
        "(after the subcommand) to see the merged result, and `--ckpt_path last` (or a local checkpoint "
        "file) to resume; a `--ckpt_path` that is a URL, a missing file or a file that cannot be loaded "
        "weights-only is refused before anything runs.",
        "",
        "- Every shipped config and its keys: [Shipped configs](configs.md).",
        "- The arguments behind `model.init_args` and `data.init_args`: "
        + ", ".join(f"[{path.rsplit('.', 1)[1]}][{path}]" for path in TRAINING_CLASSES)
        + " in the [Python API](api.md#training-classes).",
        "- The full LightningCLI help, trainer options included: `sammoe fit --help`.",
        "",
    ]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ configs
_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.]*):(?P<rest>.*)$")


def _split_comment(rest: str) -> tuple[str, str]:
    """(value text, comment) of what follows ``key:`` on one line (no ``#`` inside the configs' values)."""
    if rest.lstrip().startswith("#"):
        return "", rest.lstrip()[1:].strip()
    value, _, comment = rest.partition(" #")
    return value.strip(), comment.strip()


def parse_config_lines(text: str) -> tuple[dict[str, str], set[str]]:
    """(dotted key -> its comment, keys whose value is written on their own line).

    A key's comment is the one on its line, the comment lines indented under it, and the comment lines just
    above it. Keys inside list items (the trainer's callbacks) belong to their list, comments included."""
    comments: dict[str, str] = {}
    inline: set[str] = set()
    stack: list[tuple[int, str]] = []
    list_key: str | None = None
    list_indent = 0
    last_key: str | None = None
    last_indent = 0
    pending: list[str] = []

    def add(key: str, comment: str) -> None:
        comments[key] = f"{comments[key]} {comment}" if key in comments else comment

    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if not stripped or (not stack and stripped.startswith("#")):
            continue  # the header comment is shown above the table
        if list_key is not None and indent > list_indent:
            if "#" in stripped:
                add(list_key, stripped.split("#", 1)[1].strip())
            continue
        list_key = None
        if stripped.startswith("#"):
            if last_key is not None and indent > last_indent and last_key in comments and not pending:
                add(last_key, stripped[1:].strip())
            else:
                pending.append(stripped[1:].strip())
            continue
        if stripped.startswith("- "):
            list_key, list_indent = last_key, stack[-1][0] if stack else 0
            if list_key is not None:
                inline.add(list_key)
                if "#" in stripped:
                    add(list_key, stripped.split("#", 1)[1].strip())
            continue
        match = _KEY_LINE.match(line)
        if not match:
            last_key, pending = None, []
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([k for _, k in stack] + [match["key"]])
        value, comment = _split_comment(match["rest"])
        if pending:
            add(key, " ".join(pending))
            pending = []
        if comment:
            add(key, comment)
        if value:
            inline.add(key)
        stack.append((indent, match["key"]))
        last_key, last_indent = key, indent
    return comments, inline


def flatten(data: Any, prefix: str = "", leaves: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """Nested mappings -> dotted keys; lists, scalars and the keys in ``leaves`` are leaves."""
    if not isinstance(data, dict) or not data or prefix in leaves:
        return {prefix: data} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key), leaves))
    return out


def shipped_configs() -> list[Path]:
    from sammoe.assets import CONFIGS

    return sorted(CONFIGS.glob("*.yaml")) + sorted((CONFIGS / "experts").glob("*.yaml"))


def _header(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].removeprefix(" "))
    return "\n".join(lines).strip()


def _value(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return _code(yaml.safe_dump(value, default_flow_style=True, width=10_000).strip())
    return _code(yaml.safe_dump(value).strip().removesuffix("...").strip())


def configs_markdown() -> str:
    """Every shipped config: its header comment, then each key with its value and comment."""
    from sammoe.assets import CONFIGS

    out = [
        "# Shipped configs",
        "",
        NOTE.strip(),
        "",
        "The LightningCLI configs ship inside the package (`sammoe/configs/`; `configs/` in a checkout links "
        "to it), so `sammoe fit --config gate` finds `gate.yaml` from any folder; a file of that name in the "
        "current folder wins. Configs chain: `--config finetune --config experts/spinal_cord` applies the "
        "overlay over the base, and a key on the command line (`--data.init_args.roots=...`) wins over both. "
        "As shipped they train the tiny model on synthetic phantoms on a CPU; the comments say what to "
        "change for real data on GPUs, and `experts/template.yaml` is a commented starting point for your "
        "own dataset.",
        "",
        "Keys are dotted as on the command line. Lists (the trainer's callbacks) are shown whole.",
        "",
    ]
    for path in shipped_configs():
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(CONFIGS).as_posix()
        out += [f"## {name}", ""]
        header = _header(text)
        if header:
            out += ["```text", header, "```", ""]
        comments, inline = parse_config_lines(text)
        out += ["| key | value | comment |", "| --- | --- | --- |"]
        for key, value in flatten(yaml.safe_load(text) or {}, leaves=inline).items():
            out.append(f"| `{key}` | {_value(value)} | {_cell(comments.get(key, ''))} |")
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ manifest
def _type(schema: dict[str, Any] | bool) -> str:
    if not isinstance(schema, dict) or not schema:
        return "any"
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " or ".join(json.dumps(v) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    kind = schema.get("type", "any")
    if kind == "array":
        items = schema.get("prefixItems") or [schema.get("items", {})]
        return "array of " + ", ".join(_type(s) for s in items)
    extra = schema.get("additionalProperties")
    if kind == "object" and isinstance(extra, dict):
        return "object of " + _type(extra)
    return str(kind)


def _constraints(schema: dict[str, Any]) -> str:
    keys = ("pattern", "minLength", "maxLength", "minimum", "maximum", "minItems", "maxItems")
    found = [f"{k} {_code(schema[k])}" for k in keys if k in schema]
    for option in schema.get("anyOf", []):
        found += [f"{k} {_code(option[k])}" for k in keys if k in option]
    return ", ".join(found)


def _model_table(title: str, schema: dict[str, Any], level: int) -> list[str]:
    out = [f"{'#' * level} {title}", ""]
    if schema.get("description"):
        out += [" ".join(schema["description"].split()), ""]
    required = set(schema.get("required", []))
    out += ["| field | type | required | default | description |", "| --- | --- | --- | --- | --- |"]
    for name, field in schema.get("properties", {}).items():
        default = _code(json.dumps(field["default"])) if "default" in field else ""
        description = field.get("description", "")
        limits = _constraints(field)
        if limits:
            description = f"{description} ({limits})" if description else limits
        out.append(
            f"| `{name}` | {_cell(_type(field))} | {'yes' if name in required else ''} | {default} | "
            f"{_cell(description)} |"
        )
    out.append("")
    return out


def manifest_markdown() -> str:
    """The ExpertManifest model's JSON schema, field by field and whole."""
    from sammoe.plugins.manifest import ExpertManifest

    schema = ExpertManifest.model_json_schema()
    out = [
        "# Plugin manifest",
        "",
        NOTE.strip(),
        "",
        "An expert plugin's entry point (group `sammoe.experts`) returns this manifest, and "
        "`sammoe experts package` writes it as `manifest.json` inside the generated package. Discovery "
        "validates it against the pydantic model `sammoe.plugins.manifest.ExpertManifest` without importing "
        "torch; a plugin whose manifest does not validate is listed as broken, with the reason, and skipped.",
        "",
    ]
    out += _model_table("ExpertManifest", schema, 2)
    for name, sub in schema.get("$defs", {}).items():
        out += _model_table(name, sub, 3)
    example = REPO / "experts" / "sammoe-expert-spinal-cord" / "sammoe_expert_spinal_cord" / "manifest.json"
    if example.is_file():
        out += [
            "## Example",
            "",
            "The manifest of the example expert `spinal_cord` (`experts/sammoe-expert-spinal-cord`), as "
            "`sammoe experts package` wrote it:",
            "",
            "```json",
            example.read_text(encoding="utf-8").strip(),
            "```",
            "",
        ]
    out += ["## JSON schema", "", "```json", json.dumps(schema, indent=2), "```", ""]
    return "\n".join(out)
