"""`sammoe experts list | show | verify | package`.

`list` and `show` never import torch; `verify` and `package` do. Exit status: 0 success, 1 when `verify`
finds an expert that is not ok, 2 for a user error (bad arguments, unknown expert, unusable checkpoint).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sammoe.plugins.discovery import ENV_VAR, ExpertRecord, discover, get_expert


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sammoe experts",
        description=f"Expert plugins (entry-point group sammoe.experts). {ENV_VAR}=a,b|none selects plugins.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{list,show,verify,package}")

    p = sub.add_parser("list", help="installed experts with their status")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("show", help="one expert's manifest and status")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("verify", help="checksum, compatibility and one forward pass on a random volume")
    p.add_argument("names", nargs="*", metavar="NAME", help="experts to verify (default: all)")
    p.add_argument("--backbone", metavar="CKPT", help="backbone weights (default: the preset's seeded init)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("package", help="turn a finetuned expert checkpoint into a pip-installable plugin")
    p.add_argument(
        "--checkpoint", required=True, metavar="CKPT", help="Lightning .ckpt, or .safetensors + .json"
    )
    p.add_argument("--name", required=True, help="expert name: lowercase letters, digits, _")
    p.add_argument("--out", required=True, metavar="DIR", help="new project directory (must not exist)")
    p.add_argument("--version", help="plugin version (default: the checkpoint's, else 0.1.0)")
    p.add_argument("--meta", metavar="JSON", help="metadata overriding the checkpoint's (preset, task, ...)")
    p.add_argument("--backbone", metavar="CKPT", help="backbone weights the expert was trained on")
    p.add_argument(
        "--router",
        metavar="FILE",
        help="the expert's router (default: router.safetensors next to the checkpoint, when present)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # argparse already printed usage or help
        return int(exit_.code or 0)
    return {"list": _list, "show": _show, "verify": _verify, "package": _package}[args.command](args)


def _record_json(record: ExpertRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "status": record.status,
        "reason": record.reason,
        "distribution": record.distribution,
        "distribution_version": record.dist_version,
        "entry_point": record.entry_point,
        "weights_path": None if record.weights_path is None else str(record.weights_path),
        "manifest": None if record.manifest is None else record.manifest.model_dump(mode="json"),
    }


def _row(record: ExpertRecord) -> list[str]:
    m = record.manifest
    if m is None:
        return [record.name, "-", record.origin, "-", "-", "-", "-", "-", record.status]
    classes = ",".join(f"{k}={v}" for k, v in m.task.classes.items())
    trained = "yes" if m.provenance.finetuned else "no"
    router = "no"
    if m.router is not None:
        router = "yes" if m.router.recall is None else f"recall {m.router.recall:.2f}"
    return [
        m.name,
        m.version,
        record.origin,
        m.kind,
        m.backbone.preset,
        classes,
        trained,
        router,
        record.status,
    ]


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _print_records(records: list[ExpertRecord], as_json: bool) -> None:
    if as_json:
        print(json.dumps([_record_json(r) for r in records], indent=2))
        return
    if not records:
        print(f"no expert plugins installed (entry-point group sammoe.experts; {ENV_VAR} may deselect them)")
        return
    header = [
        "NAME",
        "VERSION",
        "DISTRIBUTION",
        "KIND",
        "BACKBONE",
        "CLASSES",
        "FINETUNED",
        "ROUTER",
        "STATUS",
    ]
    _print_table([header] + [_row(r) for r in records])
    for record in records:
        if not record.ok:
            print(f"{record.status}: {record.reason}")


def _list(args: argparse.Namespace) -> int:
    _print_records(discover(), args.json)
    return 0


def _show(args: argparse.Namespace) -> int:
    record = get_expert(args.name)
    if args.json:
        print(json.dumps(_record_json(record), indent=2))
        return 0
    print(f"name:          {record.name}")
    print(f"status:        {record.status}{': ' + record.reason if record.reason else ''}")
    print(f"distribution:  {record.origin}")
    print(f"entry point:   {record.entry_point}")
    if record.weights_path is not None:
        print(f"weights:       {record.weights_path}")
    if record.manifest is not None:
        print("manifest:")
        for line in record.manifest.model_dump_json(indent=2).splitlines():
            print(f"  {line}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from sammoe.publish.verify import BackboneCache, verify_expert

    records = discover(args.names) if args.names else discover()
    cache = BackboneCache(args.backbone)
    if not records and not args.json:
        print("no expert plugins installed; nothing to verify")
    width = max((len(r.name) for r in records), default=0)
    checked = []
    for i, record in enumerate(records, 1):
        # the first check builds the backbone (tens of seconds): say what runs, line by line, even in a log
        print(f"verifying {record.name} ({i}/{len(records)}) ...", file=sys.stderr, flush=True)
        result = verify_expert(record, cache=cache)
        checked.append(result)
        if not args.json:
            print(f"{result.name.ljust(width)}  {result.status:<12}  {_verdict(result)}", flush=True)
    if args.json:
        print(json.dumps([_record_json(r) for r in checked], indent=2))
    failed = [r for r in checked if not r.ok]
    for record in failed:  # on stderr as well, so a --json run or a filtered log still says why
        print(f"sammoe: error: {record.status}: {record.reason}", file=sys.stderr, flush=True)
    return 1 if failed else 0


def _verdict(record: ExpertRecord) -> str:
    if not record.ok:
        return record.reason
    routed = record.manifest is not None and record.manifest.router is not None
    return "checksum, compatibility and forward pass passed" + (" (decoder and router)" if routed else "")


def _package(args: argparse.Namespace) -> int:
    from sammoe.publish.package import distribution_name, package_expert

    out = package_expert(
        args.checkpoint,
        args.name,
        args.out,
        version=args.version,
        meta=args.meta,
        backbone=args.backbone,
        router=args.router,
    )
    # pip reads a bare relative name as a package to download: spell the directory as a path
    where = str(out) if out.is_absolute() or str(out).startswith(".") else f"./{out}"
    print(f"wrote plugin project {where} (distribution {distribution_name(args.name)})")
    if not (out / f"sammoe_expert_{args.name}" / "router.safetensors").is_file():
        print("no router packaged: only a gate trained over the installed experts can route this expert")
    print(f"install it with: pip install {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
