"""What a benchmark ran on, printed in its header and written into its JSON/markdown, and the AVX2 mode.

    python benchmarks/machine.py                          # the header a benchmark would print here
    python benchmarks/machine.py --cpu-capability avx2    # the same, as an AVX2 CPU (checked)

Every CPU benchmark calls `describe()` once its thread count is set and prints `header()`: CPU model
(/proc/cpuinfo `model name`, else platform.processor()), torch's CPU capability (the kernels ATen
dispatches to) and oneDNN's ISA, what the hardware offers, torch's thread count, torch and Python versions,
whether sammoe's `bf16_pays` picks bf16 autocast for a vit_b-wide model on this CPU, and the exact command
line (with the emulation variables in front when they are set).

`--cpu-capability avx2` (every benchmark has it, via `add_option` and `as_capability`) re-runs the
benchmark with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 in its
environment: the variables only act when set before torch is imported, which is why the process is run
anew. The new process refuses to run, in one line, unless torch then reports AVX2 (and oneDNN no AVX-512).
`benchmarks/as_avx2.sh CMD...` does the same for any command.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# What makes an AVX-512 machine compute like an AVX2 one: ATen's kernels, oneDNN (convolutions, linear
# layers) and MKL (BLAS) each take their own variable, read once when torch loads them.
EMULATION = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
}
VIT_B_WIDTH = 768  # vit_b_ori's encoder width: the width bf16_pays is asked about


def add_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cpu-capability",
        choices=sorted(EMULATION),
        default=None,
        help="run as a CPU with only this instruction set (re-runs the benchmark with ATEN_CPU_CAPABILITY, "
        "ONEDNN_MAX_CPU_ISA and MKL_ENABLE_INSTRUCTIONS set; refused unless torch then reports it)",
    )


def as_capability(capability: str | None, script: str, argv: list[str] | None) -> bool:
    """False when this process already runs as ``capability`` (checked: SystemExit otherwise) or none was
    asked: the benchmark goes on. True when it ran instead in a new process with the emulation variables
    (``argv`` a list, as a test calling ``main(argv)`` gives; SystemExit with its status if it failed).
    ``argv`` None (a command line): this process becomes the new one and does not return."""
    if capability is None:
        return False
    wanted = EMULATION[capability]
    if all(os.environ.get(k) == v for k, v in wanted.items()):
        check_capability(capability)
        return False
    if os.environ.get("SAMMOE_BENCH_CPU_CAPABILITY") == capability:  # a re-run whose variables got lost
        raise SystemExit(f"--cpu-capability {capability}: the emulation variables did not reach the re-run")
    env = {**os.environ, **wanted, "SAMMOE_BENCH_CPU_CAPABILITY": capability}
    cmd = [sys.executable, *(sys.argv if argv is None else [str(script), *argv])]
    sys.stdout.flush()
    if argv is None:
        os.execve(sys.executable, cmd, env)
    status = subprocess.call(cmd, env=env)
    if status:
        raise SystemExit(status)
    return True


def check_capability(capability: str) -> None:
    """SystemExit (one line) unless torch and oneDNN run no wider than ``capability``."""
    got = torch.backends.cpu.get_cpu_capability()
    variables = " ".join(f"{k}={v}" for k, v in EMULATION[capability].items())
    if got != capability.upper():
        raise SystemExit(
            f"--cpu-capability {capability}: torch reports {got} with {variables}; not running "
            f"(this CPU offers {hardware_capability() or 'unknown'})"
        )
    isa = onednn_isa()
    if isa and ("512" in isa or "AMX" in isa):
        raise SystemExit(f"--cpu-capability {capability}: oneDNN still uses {isa!r} with {variables}")


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> set[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def hardware_capability() -> str | None:
    """What torch would pick on this CPU without the variables (from /proc/cpuinfo; None elsewhere)."""
    flags = cpu_flags()
    if not flags:
        return None
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "AVX512"
    return "AVX2" if "avx2" in flags else "DEFAULT"


@functools.cache
def onednn_isa() -> str | None:
    """The ISA oneDNN dispatches to, from its verbose banner (printed once per process, on its first
    primitive: call this before the benchmark's work, or get None)."""
    if not torch.backends.mkldnn.is_available():
        return None
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as out:
        os.dup2(out.fileno(), 1)
        try:
            with torch.no_grad(), torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                torch.nn.functional.conv2d(torch.ones(2, 64, 16, 16), torch.ones(64, 64, 3, 3))
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    return next((line.split("isa:", 1)[1].strip() for line in text.splitlines() if ",isa:" in line), None)


def bf16_choice() -> tuple[bool | None, str]:
    """(sammoe's bf16_pays for a vit_b-wide model on this CPU, why it may not follow the emulation)."""
    try:
        from sammoe.inference.devices import bf16_pays
    except ImportError as error:
        return None, f"not importable: {error}"
    try:
        pays = bf16_pays(torch.device("cpu"), VIT_B_WIDTH)
    except TypeError:  # a signature without the width
        pays = bf16_pays(torch.device("cpu"))
    note = ""
    if pays and torch.backends.cpu.get_cpu_capability() != hardware_capability():
        native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
        note = (
            "does NOT follow the emulated capability: sammoe.inference.devices.cpu_has_native_bf16 reads "
            "the hardware flags in /proc/cpuinfo (avx512_bf16/amx_bf16), which the variables do not change "
            f"(torch's own oneDNN check, torch.ops.mkldnn._is_mkldnn_bf16_supported(), says {native})"
        )
    return pays, note


def float32_as_emulated(info: dict) -> bool:
    """True when sammoe's automatic precision would pick bf16 only because bf16_pays reads the hardware
    (see bf16_choice): the benchmark then asks for float32, the automatic choice on the emulated CPU."""
    return bool(info["emulation"] and info["bf16_pays"] and info["bf16_pays_note"])


def command_line(script: str | None = None, argv: list[str] | None = None) -> str:
    """The command that reproduces this run, emulation variables first (``argv``: a ``main(argv)`` call)."""
    env = [f"{k}={os.environ[k]}" for v in EMULATION.values() for k in v if k in os.environ]
    if argv is None:
        words = [sys.executable, *sys.argv]
    else:
        name = Path(script).resolve() if script else Path(sys.argv[0])
        with contextlib.suppress(ValueError):
            name = name.relative_to(ROOT)
        words = [sys.executable, str(name), *argv]
    return " ".join([*env, shlex.join(words)])


def describe(script: str | None = None, argv: list[str] | None = None, threads: int | None = None) -> dict:
    """The machine and command of this run, as a JSON-ready dict (see the module docstring)."""
    isa = onednn_isa()
    pays, note = bf16_choice()
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "hardware_capability": hardware_capability(),
        "emulation": {k: os.environ[k] for v in EMULATION.values() for k in v if k in os.environ},
        "onednn_isa": isa,
        "threads": threads if threads is not None else torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "bf16_pays": pays,
        "bf16_pays_note": note,
        "command": command_line(script, argv),
    }


def header(info: dict) -> str:
    capability = info["cpu_capability"]
    if info["emulation"]:
        capability += f" (emulated; the hardware offers {info['hardware_capability']})"
    lines = [
        f"machine: {info['cpu']}, {info['logical_cpus']} logical CPUs; torch CPU capability {capability}, "
        f"oneDNN ISA {info['onednn_isa'] or 'unknown'}",
        f"torch {info['torch']}, {info['threads']} threads, python {info['python']}; "
        f"bf16_pays (vit_b width, cpu): {info['bf16_pays']}",
    ]
    if info["bf16_pays_note"]:
        lines.append(f"  WARNING bf16_pays {info['bf16_pays_note']}")
    lines.append(f"command: {info['command']}")
    return "\n".join(lines)


def markdown(info: dict) -> str:
    """The same facts as a markdown list, for a report."""
    capability = info["cpu_capability"]
    if info["emulation"]:
        capability += f" (emulated on {info['hardware_capability']})"
    lines = [
        f"- CPU: {info['cpu']} ({info['logical_cpus']} logical CPUs), torch CPU capability `{capability}`, "
        f"oneDNN ISA {info['onednn_isa'] or 'unknown'}",
        f"- torch {info['torch']}, {info['threads']} threads, python {info['python']}; "
        f"`bf16_pays`: {info['bf16_pays']}",
    ]
    if info["bf16_pays_note"]:
        lines.append(f"- `bf16_pays` {info['bf16_pays_note']}")
    lines.append(f"- command: `{info['command']}`")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_option(parser)
    args = parser.parse_args(argv)
    if as_capability(args.cpu_capability, __file__, argv):
        return None
    info = describe(__file__, argv)
    print(header(info))
    return info


if __name__ == "__main__":
    main()
