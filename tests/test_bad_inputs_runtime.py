"""Bad inputs at run time: nothing hangs, nothing ends in a traceback, the Python API raises its own errors.

- `sammoe weights fetch` against a hub that drips bytes, says nothing, or announces an absurd size; a
  manifest nested too deep to read; SIGTERM in the middle of a download.
- Expert plugins whose code never returns or prints on stdout; `sammoe experts verify` saying why it fails.
- `Predictor` misuse: one SammoeError naming the argument.

The hub is served from this process on 127.0.0.1 (no test reaches the internet).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sammoe import cli, hub
from sammoe.cli import weights as weights_cli
from sammoe.errors import CheckpointError, ConfigError, DataError, SammoeError
from sammoe.inference.predictor import Predictor, Target
from sammoe.plugins.discovery import discover
from sammoe.plugins.testing import fake_expert

REPO, FILE = "acme/sam-test", "weights.pth"
DRIPPED = 40  # header bytes a slow server sends one at a time: 4 s at 0.1 s each
CONTENT = bytes(range(256)) * 400  # 102,400 bytes
DEAD = "http://127.0.0.1:9"
ROOT = Path(__file__).resolve().parents[1]


class Hub:
    """HEAD: metadata (size as ``size_header``; its first ``DRIPPED`` bytes one every ``head_drip`` seconds
    when set); GET: per request the next mode of ``plan`` ("ok", "drip": one byte every 0.2 s for
    ``drip_for`` seconds then hang up, "silent": headers then nothing for ``silent_for`` seconds, "503",
    "slow-headers": the headers' first ``DRIPPED`` bytes one every 0.1 s, then the file); "ok" once the plan
    is used up."""

    def __init__(self, repo: str = REPO, file: str = FILE):
        self.repo, self.file = repo, file
        self.size_header = str(len(CONTENT))
        self.plan: list[str] = []
        self.drip_for, self.silent_for = 4.0, 2.0
        self.head_drip = 0.0
        self.stop = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def _handler(fake: Hub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def answer(self, drip: float) -> None:
            """end_headers, or the status line and headers sent one byte at a time for a while."""
            if not drip:
                self.end_headers()
                return
            self._headers_buffer.append(b"\r\n")
            raw, self._headers_buffer = b"".join(self._headers_buffer), []
            for byte in raw[:DRIPPED]:
                if fake.stop.is_set():
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                fake.stop.wait(drip)
            self.wfile.write(raw[DRIPPED:])
            self.wfile.flush()

        def do_HEAD(self):
            if self.path != f"/{fake.repo}/resolve/main/{fake.file}":
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            sha = hashlib.sha256(CONTENT).hexdigest()
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{fake.port}/cdn/{fake.file}")  # another host
            self.send_header("X-Repo-Commit", "0" * 40)
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("ETag", f'"{sha}"')
            self.send_header("X-Linked-Size", fake.size_header)
            self.send_header("Content-Length", "0")
            self.answer(fake.head_drip)

        def do_GET(self):
            if not self.path.startswith("/cdn/"):  # huggingface_hub asks other things of its endpoint
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            mode = fake.plan.pop(0) if fake.plan else "ok"
            if mode == "503":
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(self.headers.get("Range", "bytes=0-").removeprefix("bytes=").split("-")[0])
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(CONTENT) - 1}/{len(CONTENT)}")
            self.send_header("Content-Length", str(len(CONTENT) - start))
            self.answer(0.1 if mode == "slow-headers" else 0.0)
            self.wfile.flush()
            if mode in ("ok", "slow-headers"):
                self.wfile.write(CONTENT[start:])
                return
            self.close_connection = True
            if mode == "silent":
                fake.stop.wait(fake.silent_for)
                return
            end = time.monotonic() + fake.drip_for  # "drip"
            for byte in CONTENT[start:]:
                if fake.stop.is_set() or time.monotonic() > end:
                    return
                try:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                except OSError:
                    return
                fake.stop.wait(0.2)

    return Handler


@pytest.fixture
def fake(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for env in (hub.READ_TIMEOUT_ENV, hub.BUDGET_ENV, hub.ANSWER_ENV):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", DEAD)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", DEAD + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(hub, "REGISTRY", {"turbo": hub.ModelEntry(repo=REPO, file=FILE)})
    server = Hub()
    yield server
    server.close()


def _one_line(text: str) -> str:
    assert "\n" not in text.strip(), text
    return text.strip()


def _parts() -> list[Path]:
    return sorted((hub.cache_dir() / "weights" / "turbo").glob("*.part"))


# ------------------------------------------------------------------------------------------ weights fetch
def test_a_server_that_drips_bytes_is_stopped_by_the_time_budget(fake, monkeypatch):
    fake.plan = ["drip"]
    monkeypatch.setenv(hub.BUDGET_ENV, "1")
    with pytest.raises(CheckpointError) as err:
        hub.fetch("turbo", endpoint=fake.endpoint)
    message = _one_line(str(err.value))
    assert "too slow" in message and hub.BUDGET_ENV in message and "again to resume" in message
    (part,) = _parts()  # kept: the next fetch resumes it
    assert 0 < part.stat().st_size < len(CONTENT) and part.read_bytes() == CONTENT[: part.stat().st_size]
    assert hub.cached("turbo") is None

    monkeypatch.delenv(hub.BUDGET_ENV)
    assert hub.fetch("turbo", endpoint=fake.endpoint).read_bytes() == CONTENT


def test_a_server_that_says_nothing_is_stopped_by_the_read_timeout(fake, monkeypatch):
    fake.plan = ["silent"] * 5
    monkeypatch.setenv(hub.READ_TIMEOUT_ENV, "0.3")
    with pytest.raises(CheckpointError) as err:
        hub.fetch("turbo", endpoint=fake.endpoint)
    message = _one_line(str(err.value))
    assert "stopped at 0 B" in message and "ReadTimeout" in message and "again to resume" in message


def test_a_hub_whose_metadata_answer_trickles_in_is_stopped_by_the_answer_limit(fake, monkeypatch):
    """Each header byte comes within the read timeout, so only a limit on the whole answer stops it."""
    fake.head_drip = 0.1
    monkeypatch.setenv(hub.ANSWER_ENV, "1")
    with pytest.raises(CheckpointError) as err:
        hub.fetch("turbo", endpoint=fake.endpoint)
    message = _one_line(str(err.value))
    assert f"{fake.endpoint}/{REPO}/resolve/main/{FILE} did not answer in full within 1 s" in message
    assert f"raise {hub.ANSWER_ENV}" in message
    assert _parts() == [] and hub.cached("turbo") is None


def test_a_download_whose_headers_trickle_in_is_stopped_and_resumes(fake, monkeypatch):
    fake.plan = ["slow-headers"]
    monkeypatch.setenv(hub.ANSWER_ENV, "1")
    with pytest.raises(CheckpointError) as err:
        hub.fetch("turbo", endpoint=fake.endpoint)
    message = _one_line(str(err.value))
    assert f"http://localhost:{fake.port}/cdn/{FILE} did not answer in full within 1 s" in message
    assert hub.ANSWER_ENV in message and "resumes the download" in message
    assert hub.cached("turbo") is None
    monkeypatch.delenv(hub.ANSWER_ENV)
    assert hub.fetch("turbo", endpoint=fake.endpoint).read_bytes() == CONTENT


@pytest.mark.parametrize("value", ["abc", "0", "-3", "inf"])
def test_a_bad_answer_limit_is_one_line_before_the_network(fake, monkeypatch, capsys, value):
    monkeypatch.setenv(hub.ANSWER_ENV, value)
    fake.head_drip = 0.5  # a request would take 20 s: the value is refused before any is made
    assert weights_cli.main(["fetch", "turbo", "--endpoint", fake.endpoint]) == 2
    err = _one_line(capsys.readouterr().err)
    assert err.startswith(f"sammoe: error: {hub.ANSWER_ENV}={value!r}")


@pytest.mark.parametrize("value", ["abc", "0", "-3", "inf"])
def test_a_bad_fetch_timeout_is_one_line(fake, monkeypatch, capsys, value):
    monkeypatch.setenv(hub.READ_TIMEOUT_ENV, value)
    assert weights_cli.main(["fetch", "turbo", "--endpoint", fake.endpoint]) == 2
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("sammoe: error: ") and hub.READ_TIMEOUT_ENV in err


@pytest.mark.parametrize("size", ["-5", "0", str(55 * 10**9)])
def test_an_absurd_size_from_the_hub_is_one_line(fake, monkeypatch, capsys, size):
    fake.size_header = size
    monkeypatch.setattr(hub.shutil, "disk_usage", lambda path: SimpleNamespace(free=10**15))
    assert weights_cli.main(["fetch", "turbo", "--endpoint", fake.endpoint]) == 2
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("sammoe: error: turbo: ") and f"size of {size} bytes" in err
    assert _parts() == []


def test_a_deeply_nested_weights_manifest_is_not_a_cache_entry(fake, capsys):
    folder = hub.cache_dir() / "weights" / "turbo"
    folder.mkdir(parents=True)
    (folder / FILE).write_bytes(CONTENT)
    (folder / f"{FILE}.json").write_text("[" * 200_000 + "]" * 200_000)
    assert hub.cached("turbo") is None
    assert weights_cli.main(["path", "turbo"]) == 2
    assert "sammoe weights fetch turbo" in _one_line(capsys.readouterr().err)
    assert weights_cli.main(["list", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["path"] is None


def test_sigterm_during_a_fetch_is_one_line_and_the_download_resumes(tmp_path, monkeypatch):
    entry = hub.REGISTRY[hub.TURBO]
    server = Hub(entry.repo, entry.file)
    server.plan = ["drip"]
    server.drip_for = 30.0
    cache = tmp_path / "cache"
    env = {**os.environ, hub.CACHE_ENV: str(cache), "HF_ENDPOINT": DEAD}
    env.pop("HF_HUB_OFFLINE", None)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sammoe", "weights", "fetch", "turbo", "--endpoint", server.endpoint],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        folder = cache / "weights" / "turbo"
        for _ in range(300):  # until bytes arrive (python and huggingface_hub start first)
            if any(p.stat().st_size for p in folder.glob("*.part")) or proc.poll() is not None:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        server.close()
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("sammoe: terminated (SIGTERM); weights stopped") and "resumes" in last
    assert out == ""
    parts = list(folder.glob("*.part"))
    assert len(parts) == 1, err
    part = parts[0]
    assert part.read_bytes() == CONTENT[: part.stat().st_size]


# ------------------------------------------------------------------------------------------------ plugins
SLOW_IMPORT = "import time\n\ntime.sleep(4)\n\n\ndef manifest():\n    return {}\n"
SLOW_MANIFEST = "import time\n\n\ndef manifest():\n    time.sleep(4)\n"


@pytest.mark.parametrize(
    "module,source,where",
    [("slow_import", SLOW_IMPORT, "importing entry point"), ("slow_manifest", SLOW_MANIFEST, ":manifest()")],
)
def test_a_plugin_that_never_answers_is_broken_and_the_others_load(
    plugin_site_dir, monkeypatch, module, source, where
):
    fake_expert(plugin_site_dir, "slow", module=module, module_source=source)
    fake_expert(plugin_site_dir, "liver")
    monkeypatch.setenv("SAMMOE_EXPERTS", "slow,liver")
    monkeypatch.setenv("SAMMOE_PLUGIN_TIMEOUT", "0.5")
    slow, liver = sorted(discover(), key=lambda r: r.name != "slow")
    assert slow.status == "broken" and "did not answer within 0.5 s" in slow.reason and where in slow.reason
    assert "SAMMOE_PLUGIN_TIMEOUT" in slow.reason
    assert (liver.name, liver.status) == ("liver", "ok")


def test_a_bad_plugin_timeout_is_one_line(plugin_site_dir, monkeypatch, capsys):
    fake_expert(plugin_site_dir, "liver")
    monkeypatch.setenv("SAMMOE_PLUGIN_TIMEOUT", "soon")
    assert cli.main(["experts", "list"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("sammoe: error: SAMMOE_PLUGIN_TIMEOUT='soon'")


def test_a_plugin_that_prints_keeps_experts_list_json_valid(plugin_site_dir, monkeypatch, capsys):
    source = (
        "import json, pathlib\n\nprint('hello from the import')\n\n\ndef manifest():\n"
        "    print('hello from manifest()')\n"
        "    return json.loads((pathlib.Path(__file__).parent / 'manifest.json').read_text())\n"
    )
    fake_expert(plugin_site_dir, "chatty", module_source=source)
    monkeypatch.setenv("SAMMOE_EXPERTS", "chatty")
    assert cli.main(["experts", "list", "--json"]) == 0
    out, err = capsys.readouterr()
    (row,) = json.loads(out)
    assert row["name"] == "chatty" and "hello from the import" in err and "hello from manifest()" in err


def test_experts_verify_says_why_it_fails_and_what_it_checks(
    plugin_site_dir, monkeypatch, capsys, tiny_model_and_fingerprint
):
    fake_expert(plugin_site_dir, "tampered", weights={"sha256": "0" * 64})
    monkeypatch.setenv("SAMMOE_EXPERTS", "tampered")
    assert cli.main(["experts", "verify", "--json", "tampered", "nope"]) == 1
    out, err = capsys.readouterr()
    assert [r["name"] for r in json.loads(out)] == ["nope", "tampered"]
    lines = err.strip().splitlines()
    assert "verifying nope (1/2) ..." in lines and "verifying tampered (2/2) ..." in lines
    errors = [line for line in lines if line.startswith("sammoe: error: ")]
    assert len(errors) == 2
    assert "'nope'" in errors[0] and "no installed distribution" in errors[0]
    assert "'tampered'" in errors[1] and "sha256" in errors[1]

    assert cli.main(["experts", "verify", "nope"]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("nope  broken") and "sammoe: error: broken: expert 'nope'" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_fit_on_a_gpu_a_cpu_machine_lacks_is_one_line(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["sammoe"])  # LightningCLI reads only the arguments given
    argv = ["fit", "--config", "configs/gate.yaml", "--trainer.accelerator", "gpu"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("sammoe: error: trainer configuration: ") and "--trainer.accelerator" in err


# ---------------------------------------------------------------------------------------------- Predictor
@pytest.fixture(scope="module")
def predictor(shipped_tiny_model):
    pred = Predictor(shipped_tiny_model, "cpu", use_sliding_window=False)
    pred.set_image(np.random.default_rng(0).random((40, 40, 40), dtype=np.float32), np.eye(4))
    return pred


@pytest.mark.parametrize(
    "targets,error,fragment",
    [
        ({"points": [[20, 20, 20]]}, ConfigError, "targets: expected a Target"),
        (([20, 20, 20],), ConfigError, "targets[0]: expected a Target, got list"),
        (3, ConfigError, "targets: expected a Target"),
        (Target([["20", "20", "20"]]), DataError, "got '20' (str)"),
        (Target([[True, 20, 20]]), DataError, "got True (bool)"),
        (Target(np.array([[True, False, True]])), DataError, "(bool)"),
        (Target([[None, 20, 20]]), DataError, "got None"),
    ],
)
def test_predict_refuses_targets_that_are_not_targets(predictor, targets, error, fragment):
    with pytest.raises(error) as err:
        predictor.predict(targets)
    assert fragment in _one_line(str(err.value))


def test_add_click_refuses_bad_target_index_and_positive(predictor):
    predictor.predict(Target([[20, 20, 20]]))
    for target in (0.5, True, None, [0]):
        with pytest.raises(ConfigError, match=r"target=.*give a target's index"):
            predictor.add_click(target, [20, 21, 20])
    with pytest.raises(ConfigError, match="positive='no'"):
        predictor.add_click(0, [20, 21, 20], positive="no")
    with pytest.raises(DataError, match="got True"):
        predictor.add_click(0, [True, 21, 20])
    assert predictor.add_click(0, [20.0, 21, 20], positive=0).clicks == 2  # 0 and 1 are fine


@pytest.mark.parametrize(
    "image,affine,error,fragment",
    [
        (np.zeros((40, 40, 40), np.float32), "eye", ConfigError, "affine: expected a 4x4"),
        (np.zeros((40, 40, 40), np.float32), np.eye(3), ConfigError, "affine: expected a 4x4"),
        (np.zeros((0, 40, 40), np.float32), np.eye(4), DataError, "is empty"),
    ],
)
def test_set_image_refuses_a_bad_affine_or_an_empty_array(shipped_tiny_model, image, affine, error, fragment):
    pred = Predictor(shipped_tiny_model, "cpu")
    with pytest.raises(error) as err:
        pred.set_image(image, affine)
    assert fragment in _one_line(str(err.value))


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (dict(share_roi=-0.1), "share_roi=-0.1"),
        (dict(share_roi=0.6), "share_roi=0.6"),
        (dict(share_roi="x"), "share_roi='x'"),
        (dict(share_roi=True), "share_roi=True"),
        (dict(cache_size=0), "cache_size=0"),
        (dict(cache_size=2.5), "cache_size=2.5"),
        (dict(max_windows=0), "max_windows=0"),
    ],
)
def test_predictor_options_are_checked(shipped_tiny_model, kwargs, fragment):
    with pytest.raises(ConfigError) as err:
        Predictor(shipped_tiny_model, "cpu", **kwargs)
    assert fragment in _one_line(str(err.value))


def test_load_refuses_experts_that_are_not_names_and_add_click_before_predict(shipped_tiny_model):
    for experts in (3, [1, 2]):
        with pytest.raises(ConfigError, match=r"experts=.*expert names"):
            Predictor.load("demo", experts=experts, device="cpu")
    pred = Predictor(shipped_tiny_model, "cpu")
    with pytest.raises(SammoeError, match="set_image"):
        pred.add_click(0, [1, 2, 3])
    pred.set_image(np.random.default_rng(0).random((8, 8, 8), dtype=np.float32))
    with pytest.raises(ConfigError, match="predict"):
        pred.add_click(0, [1, 2, 3])
