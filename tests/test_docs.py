"""The README and the documentation quote only what exists: files, commands and their options, make targets,
config keys. The README stays a short page for users (no commit hashes, issue numbers or history), and the
generated reference pages (docs/hooks/gen_reference.py) build from the code. Fast, no network, no MkDocs.

Each check is a function from a document's text to a list of problems, so that it can be run on any text
(e.g. an older README) as well as on the files of this checkout.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CONFIGS = REPO / "sammoe" / "configs"
HOOK = REPO / "docs" / "hooks" / "gen_reference.py"
DOCUMENTS = [README, REPO / "CHANGELOG.md", *sorted((REPO / "docs").rglob("*.md"))]
README_MAX_LINES = 220

# A repo path starts with one of these folders or is one of these top-level files.
PATH_PREFIXES = ("sammoe/", "configs/", "experts/", "docs/", "tests/", "benchmarks/", ".ci/")
TOP_FILES = {
    "Makefile",
    "pyproject.toml",
    "README.md",
    "CHANGELOG.md",
    "LICENSE",
    "CITATION.cff",
    "mkdocs.yml",
    ".gitignore",
}
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
FENCE = re.compile(r"^\s*```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^\s*```", re.M | re.S)
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
COMMAND = re.compile(r"(?:^|[\s;&|(/])sammoe\s+(?P<rest>[a-z].*)$")
MAKE = re.compile(r"(?:^|[\s;&|(])make\s+(?P<rest>[a-z].*)$")
CONFIG_KEY = re.compile(r"\b(?P<part>model|data)\.init_args\.(?P<key>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")
HEX_HASH = re.compile(r"(?<![\w-])[0-9a-f]{7,40}(?![\w-])")
ISSUE = re.compile(r"(?i)\bissues?\s+#?\d+|(?<![\w&/])#\d+\b")
HISTORY = re.compile(
    r"(?i)\b(?:was|were|predates?|predated|previously|no longer|not kept|until this release)\b"
)


# ------------------------------------------------------------------------------------------------ parsing
def inline_spans(text: str) -> list[str]:
    """The `code` spans of a Markdown text, fenced blocks left out."""
    return INLINE.findall(FENCE.sub("", text))


def shell_lines(text: str) -> list[str]:
    """Command lines: those of shell code blocks (continuations joined, comments dropped) and inline spans."""
    lines = []
    for block in FENCE.finditer(text):
        if block["lang"].lower() not in SHELL_LANGUAGES:
            continue
        for line in block["body"].replace("\\\n", " ").splitlines():
            lines.append(re.sub(r"(^|\s)#.*$", "", line))
    return lines + inline_spans(text)


def _tokens(line: str) -> list[str]:
    return [t.strip("'\"(),;:") for t in line.split()]


def _command_tokens(rest: str) -> list[str]:
    """The tokens of one command, up to a shell separator."""
    out = []
    for token in rest.split():
        if token in ("|", "||", "&&", ";", ">", "<", "#") or token.startswith("#"):
            break
        out.append(token.strip("'\";"))
    return out


# ------------------------------------------------------------------------------------------------ the truth
@cache
def hook():
    spec = importlib.util.spec_from_file_location("gen_reference", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def dispatch() -> dict[str, str]:
    from sammoe.cli.main import _DISPATCH

    return dict(_DISPATCH)


@cache
def argparse_commands() -> dict[str, object]:
    """Command -> its argparse parser, for the commands that are not LightningCLI runs."""
    trainer = hook().TRAINER_MODULE
    return {
        name: hook()._parser_of(target)
        for name, target in dispatch().items()
        if target.split(":")[0] != trainer
    }


def _option_strings(parser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


@cache
def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", text, re.M))


@cache
def config_keys() -> set[str]:
    """Every dotted key of every shipped config (mappings descended, lists and scalars leaves)."""
    keys: set[str] = set()

    def walk(data, prefix: str) -> None:
        if isinstance(data, dict):
            for key, value in data.items():
                name = f"{prefix}.{key}" if prefix else str(key)
                keys.add(name)
                walk(value, name)

    for path in sorted(CONFIGS.rglob("*.yaml")):
        walk(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, "")
    return keys


@cache
def constructor_arguments() -> dict[str, set[str]]:
    """``model`` / ``data`` -> the constructor arguments of the training classes in sammoe/lit (read from
    the source: no Lightning import). A class named ``*DataModule`` is data, any other class model."""
    found: dict[str, set[str]] = {"model": set(), "data": set()}
    for path in sorted((REPO / "sammoe" / "lit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ClassDef):
                continue
            part = "data" if node.name.endswith("DataModule") else "model"
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    args = item.args.posonlyargs + item.args.args + item.args.kwonlyargs
                    found[part].update(a.arg for a in args if a.arg != "self")
    return found


def shipped_config_exists(name: str) -> bool:
    stem = name.removeprefix("configs/")
    return any(
        (CONFIGS / c).is_file() for c in (stem, f"{stem}.yaml", f"experts/{stem}", f"experts/{stem}.yaml")
    )


# ------------------------------------------------------------------------------------------------ checks
def _repo_path_exists(token: str) -> bool:
    token = token.removeprefix("./").rstrip(".")
    parts = ["*" if re.fullmatch(r"[A-Z_]{2,}|<[^>]*>|\.\.\.", p) else p for p in token.split("/")]
    pattern = "/".join(parts).rstrip("/")
    if any(ch in pattern for ch in "*?["):
        return any(REPO.glob(pattern))
    return (REPO / pattern).exists()


def path_problems(text: str) -> list[str]:
    """Repo paths quoted in code spans and shell blocks that do not exist; config names after --config that
    name no shipped config (a user's own `my_task.yaml` is not checked)."""
    problems = []
    for line in shell_lines(text):
        tokens = _tokens(line)
        for i, token in enumerate(tokens):
            after_config = i > 0 and tokens[i - 1] == "--config"
            if token.startswith("--config="):
                token, after_config = token.split("=", 1)[1], True
            if after_config:
                if (
                    not token.endswith(".yaml") or token.startswith("configs/")
                ) and not shipped_config_exists(token):
                    problems.append(f"--config {token}: no such shipped config")
                continue
            repo_path = token.removeprefix("./").startswith(PATH_PREFIXES) or token in TOP_FILES
            if repo_path and not _repo_path_exists(token):
                problems.append(f"{token}: no such file or folder in the repository")
    return problems


def _command_line_problems(command: str, args: list[str], parsers: dict) -> list[str]:
    if command not in dispatch():
        return [f"sammoe {command}: no such command"]
    parser = parsers.get(command)
    if parser is None:
        return []  # LightningCLI: its keys are checked as config keys
    subparsers = hook()._subparsers(parser)
    options = _option_strings(parser)
    if subparsers and args and not args[0].startswith("-"):
        wrong = [sub for sub in args[0].split("|") if sub not in subparsers]
        if wrong:
            return [f"sammoe {command} {sub}: no such subcommand" for sub in wrong]
        for sub in args[0].split("|"):
            options |= _option_strings(subparsers[sub])
    return [
        f"sammoe {command}: no option {token}"
        for token in args
        if token.startswith("--") and token.split("=", 1)[0] not in options
    ]


def command_problems(text: str) -> list[str]:
    """`sammoe X` must be a command of the dispatcher, `sammoe experts|weights X` a subcommand, every --option
    of an argparse command one it has; `make X` a Makefile target."""
    problems = []
    parsers = argparse_commands()
    for line in shell_lines(text):
        for match in COMMAND.finditer(line):
            tokens = _command_tokens(match["rest"])
            if not tokens or re.search(r"\b(?:from|import)\s+sammoe\s+$", line[: match.start("rest")]):
                continue  # Python: `from sammoe import ...`
            for command in tokens[0].split("|"):  # `sammoe fit|validate` names several
                problems += _command_line_problems(command, tokens[1:], parsers)
        for match in MAKE.finditer(line):
            for target in _command_tokens(match["rest"]):
                if not re.fullmatch(r"[a-z][\w-]*", target):
                    break
                if target not in make_targets():
                    problems.append(f"make {target}: no such Makefile target")
    return problems


def config_key_problems(text: str) -> list[str]:
    """Every model.init_args.X / data.init_args.X quoted anywhere is a key of a shipped config or an argument
    of the training classes."""
    problems = []
    arguments = constructor_arguments()
    for match in CONFIG_KEY.finditer(text):
        key = f"{match['part']}.init_args.{match['key']}"
        first = match["key"].split(".")[0]
        if key not in config_keys() and first not in arguments[match["part"]]:
            problems.append(f"{key}: in no shipped config and no {match['part']} class's arguments")
    return problems


def readme_problems(text: str) -> list[str]:
    """A page for users: short, no commit hashes, no issue numbers, no history."""
    problems = []
    lines = text.splitlines()
    if len(lines) > README_MAX_LINES:
        problems.append(f"{len(lines)} lines; at most {README_MAX_LINES}")
    for number, line in enumerate(lines, 1):
        hashes = [h for h in HEX_HASH.findall(line) if not h.isdigit()]
        if hashes:
            problems.append(f"line {number}: commit hash {hashes[0]} (history belongs in CHANGELOG.md)")
        if ISSUE.search(line):
            problems.append(f"line {number}: issue reference {ISSUE.search(line)[0]!r}")
        if HISTORY.search(line):
            problems.append(
                f"line {number}: history ({HISTORY.search(line)[0]!r}); say what is, not what was"
            )
    return problems


# ------------------------------------------------------------------------------------------------ tests
def _id(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


@pytest.mark.parametrize("document", DOCUMENTS, ids=_id)
def test_quoted_paths_exist(document):
    assert path_problems(document.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=_id)
def test_quoted_commands_and_make_targets_exist(document):
    assert command_problems(document.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=_id)
def test_quoted_config_keys_exist(document):
    assert config_key_problems(document.read_text(encoding="utf-8")) == []


def test_readme_is_short_and_has_no_history():
    assert readme_problems(README.read_text(encoding="utf-8")) == []


def test_readme_links_resolve():
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert targets, "the README links to the docs pages"
    assert [t for t in targets if "://" not in t and not (REPO / t).exists()] == []


def test_the_checks_catch_what_they_are_for():
    """Each check finds a planted problem, so that an empty result means something."""
    assert path_problems("see `sammoe/no_such_module.py` and `configs/experts/liver.yaml`") == [
        "sammoe/no_such_module.py: no such file or folder in the repository",
        "configs/experts/liver.yaml: no such file or folder in the repository",
    ]
    assert path_problems("`sammoe fit --config nope --config my_own.yaml`") == [
        "--config nope: no such shipped config"
    ]
    assert command_problems("```bash\nsammoe sgement -i x\nsammoe segment --imag x\nmake tset\n```") == [
        "sammoe sgement: no such command",
        "sammoe segment: no option --imag",
        "make tset: no such Makefile target",
    ]
    assert command_problems("`sammoe experts publish`") == ["sammoe experts publish: no such subcommand"]
    assert config_key_problems("`--model.init_args.no_such_key=1`") != []
    assert config_key_problems("`--data.init_args.roots=[a]` and `model.init_args.task.classes`") == []
    old = "was measured at commit 8b033d5 (issue 16), see #12\n" + "x\n" * README_MAX_LINES
    assert len(readme_problems(old)) == 4


def test_shipped_config_keys_are_constructor_arguments():
    """Every model/data init_args key of every shipped config (the template included) is an argument of a
    training class, so a config cannot drift from the code unnoticed."""
    arguments = constructor_arguments()
    wrong = [
        f"{path.relative_to(CONFIGS)}: {part}.init_args.{key}"
        for path in sorted(CONFIGS.rglob("*.yaml"))
        for part, section in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).items()
        if part in arguments and isinstance(section, dict)
        for key in (section.get("init_args") or {})
        if key not in arguments[part]
    ]
    assert wrong == []


def test_generated_reference_pages_cover_the_code():
    """The pages docs/hooks/gen_reference.py writes at build time name every command, option, config and
    manifest field."""
    cli = hook().cli_markdown()
    for command in dispatch():
        assert f"sammoe {command}" in cli
    for name, parser in argparse_commands().items():
        for option in _option_strings(parser) - {"-h", "--help"}:
            assert f"`{option}`" in cli, f"sammoe {name} {option}"
    configs = hook().configs_markdown()
    for path in sorted(CONFIGS.rglob("*.yaml")):
        assert f"## {path.relative_to(CONFIGS).as_posix()}" in configs
    assert "`data.init_args.roots`" in configs and "`model.init_args.task.classes`" in configs
    from sammoe.plugins.manifest import ExpertManifest

    manifest = hook().manifest_markdown()
    for field in ExpertManifest.model_fields:
        assert f"`{field}`" in manifest
