"""`sammoe weights fetch | list | path`: the named backbones and the cache they are downloaded to.

    sammoe weights fetch turbo                  # once; resumable, sha256-checked against the hub
    sammoe weights fetch turbo --endpoint https://hf-mirror.com
    sammoe weights list                         # what is known and what is cached
    sammoe weights path turbo --verify          # the cached file, re-hashed

Only `fetch` uses the network. Exit status: 0 success, 2 for an error a user can cause (one line).
"""

from __future__ import annotations

import argparse
import json
import sys

from sammoe import hub
from sammoe.errors import ConfigError, SammoeError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise ConfigError(f"{message} (see `sammoe weights --help`)")


def _parser() -> argparse.ArgumentParser:
    names = ", ".join(sorted(hub.REGISTRY))
    parser = _Parser(
        prog="sammoe weights",
        description=f"Named model weights ({names}), cached under {hub.CACHE_ENV} or the user cache folder. "
        f"`{hub.DEMO}` is the phantom model shipped with sammoe and needs no download.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{fetch,list,path}")

    p = sub.add_parser("fetch", help="download a named model into the cache (resumable, sha256-checked)")
    p.add_argument("name", help=f"model name: {names}")
    p.add_argument(
        "--endpoint",
        metavar="URL",
        help="hub base URL, e.g. a mirror (default: HF_ENDPOINT, else huggingface.co)",
    )
    p.add_argument("--force", action="store_true", help="download again even when cached")

    p = sub.add_parser("list", help="named models and their cached files")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("path", help="print the cached file of a named model")
    p.add_argument("name", help=f"model name: {names}")
    p.add_argument("--verify", action="store_true", help="re-hash the file against its recorded sha256")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except SammoeError as err:
        return _fail(err)
    try:
        return {"fetch": _fetch, "list": _list, "path": _path}[args.command](args)
    except SammoeError as err:
        return _fail(err)


def _fail(err: SammoeError) -> int:
    print(f"sammoe: error: {err}", file=sys.stderr)
    return 2


def _fetch(args: argparse.Namespace) -> int:
    print(hub.fetch(args.name, endpoint=args.endpoint, force=args.force))
    return 0


def _path(args: argparse.Namespace) -> int:
    print(hub.resolve_checkpoint(args.name, verify=args.verify).path)
    return 0


def _list(args: argparse.Namespace) -> int:
    rows = hub.list_models()
    if args.json:
        payload = [
            {
                "name": r.name,
                "repo": r.repo,
                "file": r.file,
                "path": None if r.path is None else str(r.path),
                "size": r.size,
                "sha256": r.sha256,
            }
            for r in rows
        ]
        print(json.dumps(payload, indent=2))
        return 0
    table = [["NAME", "SOURCE", "SIZE", "SHA256", "CACHED"]]
    for r in rows:
        cached = str(r.path) if r.path is not None else f"no (sammoe weights fetch {r.name})"
        sha = "-" if r.sha256 is None else r.sha256[:12]
        size = "-" if r.size is None else hub.human_size(r.size)
        table.append([r.name, f"{r.repo}/{r.file}", size, sha, cached])
    table.append([hub.DEMO, "shipped with sammoe (phantoms only)", "-", "-", "always"])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    print(f"\ncache: {hub.cache_dir() / 'weights'} (set {hub.CACHE_ENV} to move it)")
    return 0
