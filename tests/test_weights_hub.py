"""Named weights (sammoe.hub, `sammoe weights`) against a hub served from this process.

The server speaks the part of the Hugging Face hub protocol huggingface_hub uses for one file: HEAD on
/{repo}/resolve/{revision}/{file} answers with a redirect to a CDN host (as the hub does for LFS files),
carrying X-Repo-Commit, X-Linked-Etag (the sha256) and X-Linked-Size; GET on the CDN url serves the bytes,
honours Range requests, and can be told to drop the connection mid-body, fail, or serve other bytes.
No test reaches the internet: huggingface_hub's default endpoint is pointed at a closed local port.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from sammoe import hub
from sammoe.cli import weights as weights_cli
from sammoe.errors import CheckpointError, ConfigError, DataError

REPO, FILE, COMMIT = "acme/sam-test", "weights.pth", "0123456789abcdef0123456789abcdef01234567"
SIZE = 300_000
DEAD = "http://127.0.0.1:9"  # discard port: nothing listens, a connection is refused at once


class FakeHub:
    def __init__(self, content: bytes):
        self.content = content  # what the hub's sha256 and size describe
        self.served = content  # what the CDN actually sends
        self.etag: str | None = hashlib.sha256(content).hexdigest()
        self.plan: list[tuple[str, int]] = []  # per body GET: ("cut", after n bytes) | ("status", code)
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def body_gets(self) -> list[str | None]:
        return [rng for method, path, rng in self.requests if method == "GET" and path.startswith("/cdn/")]


def _handler(fake: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, Content-Length framing: a short body is detectable

        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_HEAD(self):
            self._serve(body=False)

        def do_GET(self):
            self._serve(body=True)

        def _serve(self, body: bool):
            rng = self.headers.get("Range")
            fake.requests.append((self.command, self.path, rng))
            if self.path == f"/{REPO}/resolve/main/{FILE}":
                # the hub: metadata on a redirect to another host (localhost is not 127.0.0.1 to the client)
                self.send_response(302)
                self.send_header("Location", f"http://localhost:{fake.port}/cdn/{FILE}")
                self.send_header("X-Repo-Commit", COMMIT)
                if fake.etag is not None:
                    self.send_header("X-Linked-Etag", f'"{fake.etag}"')
                    self.send_header("ETag", f'"{fake.etag}"')
                self.send_header("X-Linked-Size", str(len(fake.content)))
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == f"/cdn/{FILE}":
                self._cdn(body, rng)
            else:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()

        def _cdn(self, body: bool, rng: str | None):
            action = fake.plan.pop(0) if body and fake.plan else ("ok", 0)
            if action[0] == "status":
                self.send_response(action[1])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data, start = fake.served, 0
            if rng is not None:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if not body:
                return
            if action[0] == "cut":  # send part of the body, then hang up as a dropped connection does
                self.wfile.write(data[start : start + action[1]])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(data[start:])

    return Handler


@pytest.fixture(autouse=True)
def offline_default(monkeypatch, tmp_path):
    """Cache in tmp; huggingface_hub's default endpoint is a closed local port, never huggingface.co."""
    from huggingface_hub import constants

    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", DEAD)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", DEAD + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(hub, "REGISTRY", {"turbo": hub.ModelEntry(repo=REPO, file=FILE)})
    # bytes reach the file in chunks of this size (10 MB by default, the granularity of a resume): scaled
    # down with the file so that a cut at 100 KB keeps 100 KB
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 10_000)


@pytest.fixture
def fake():
    server = FakeHub(random.Random(0).randbytes(SIZE))
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def _folder():
    return hub.cache_dir() / "weights" / "turbo"


def _one_line(text: str) -> str:
    assert "\n" not in text.strip(), text
    return text.strip()


def test_fetch_then_list_and_resolve(fake):
    path = hub.fetch("turbo", endpoint=fake.endpoint)
    assert path == _folder() / FILE and path.read_bytes() == fake.content
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # shareable like any new file, not 0600
    manifest = json.loads((_folder() / f"{FILE}.json").read_text())
    assert manifest["sha256"] == fake.etag and manifest["size"] == SIZE and manifest["commit"] == COMMIT
    assert list(_folder().glob("*.part")) == []

    (row,) = hub.list_models()
    assert (row.name, row.repo, row.file, row.path, row.size, row.sha256) == (
        "turbo",
        REPO,
        FILE,
        path,
        SIZE,
        fake.etag,
    )
    resolved = hub.resolve_checkpoint("turbo")
    assert (resolved.path, resolved.name, resolved.is_demo) == (path, "turbo", False)
    assert hub.resolve_checkpoint("turbo", verify=True).path == path
    assert hub.resolve_checkpoint("demo") == hub.ResolvedCheckpoint(path=None, name="demo", is_demo=True)
    assert hub.resolve_checkpoint("runs/x.pth").path.as_posix() == "runs/x.pth"
    assert hub.resolve_checkpoint("./turbo").path.name == "turbo"  # a path, not the name


def test_a_cached_model_is_not_downloaded_again_unless_forced(fake):
    path = hub.fetch("turbo", endpoint=fake.endpoint)
    fake.requests.clear()
    assert hub.fetch("turbo", endpoint=fake.endpoint) == path
    assert fake.requests == []  # not even a HEAD: works offline
    assert hub.fetch("turbo", endpoint=fake.endpoint + "/", force=True) == path
    assert fake.body_gets() == [None] and path.read_bytes() == fake.content


def test_a_dropped_connection_is_resumed_not_restarted(fake):
    fake.plan = [("cut", 100_000)]
    try:
        path = hub.fetch("turbo", endpoint=fake.endpoint)  # recent huggingface_hub retries within the call
    except CheckpointError:  # 1.0 and older give up at once: the partial file waits for the next fetch
        assert hub.cached("turbo") is None
        path = hub.fetch("turbo", endpoint=fake.endpoint)
    assert path.read_bytes() == fake.content
    assert fake.body_gets() == [None, "bytes=100000-"]  # the rest, not the whole file again


def test_an_interrupted_download_is_not_cached_and_the_next_fetch_resumes(fake):
    fake.plan = [("cut", 120_000), ("status", 503)]  # dropped, and the retry fails: fetch gives up
    with pytest.raises(CheckpointError) as err:
        hub.fetch("turbo", endpoint=fake.endpoint)
    message = _one_line(str(err.value))
    assert "stopped at 120.0 KB of 300.0 KB" in message and "sammoe weights fetch turbo` again" in message
    assert hub.cached("turbo") is None and not (_folder() / FILE).exists()
    (part,) = _folder().glob("*.part")
    assert part.stat().st_size == 120_000
    with pytest.raises(CheckpointError, match="sammoe weights fetch turbo"):
        hub.resolve_checkpoint("turbo")

    fake.requests.clear()
    fake.plan = []  # huggingface_hub 1.0 and older stop at the cut and never asked again
    path = hub.fetch("turbo", endpoint=fake.endpoint)
    assert path.read_bytes() == fake.content and fake.body_gets() == ["bytes=120000-"]
    assert list(_folder().glob("*.part")) == []


def test_a_corrupted_download_is_refused_and_deleted(fake):
    fake.served = bytes(b ^ 0xFF if i == 1234 else b for i, b in enumerate(fake.content))
    with pytest.raises(CheckpointError) as err:
        hub.fetch("turbo", endpoint=fake.endpoint)
    message = _one_line(str(err.value))
    assert FILE in message and "deleted" in message and "sammoe weights fetch turbo" in message
    assert list(_folder().iterdir()) == [] and hub.cached("turbo") is None

    fake.served = fake.content  # the fix the message names works
    assert hub.fetch("turbo", endpoint=fake.endpoint).read_bytes() == fake.content


def test_a_verified_download_survives_a_refused_move_and_is_not_downloaded_again(fake, monkeypatch):
    """The disk refuses the final rename (full, I/O error): one line, nothing cached, and the verified bytes
    stay as the part file, so the next fetch moves them in without downloading again."""
    rename = os.replace

    def refuse(source, target, *args, **kwargs):
        if str(target).endswith(FILE):
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return rename(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(DataError) as err:
        hub.fetch("turbo", endpoint=fake.endpoint)
    message = _one_line(str(err.value))
    assert FILE in message and "no space left" in message.lower()
    assert hub.cached("turbo") is None and not (_folder() / FILE).exists()
    (part,) = _folder().glob("*.part")
    assert part.read_bytes() == fake.content

    monkeypatch.setattr(os, "replace", rename)
    fake.requests.clear()
    path = hub.fetch("turbo", endpoint=fake.endpoint)
    assert path.read_bytes() == fake.content and fake.body_gets() == []  # checked and moved, not fetched
    assert hub.cached("turbo") == path and list(_folder().glob("*.part")) == []


def test_a_partial_file_of_another_version_is_never_resumed(fake):
    _folder().mkdir(parents=True)
    (_folder() / f"{FILE}.{'f' * 16}.part").write_bytes(b"old version")
    hub.fetch("turbo", endpoint=fake.endpoint)
    assert fake.body_gets() == [None]
    assert list(_folder().glob("*.part")) == []


def test_turbo_without_a_download_says_how_to_get_it():
    with pytest.raises(CheckpointError) as err:
        hub.resolve_checkpoint("turbo")
    assert "sammoe weights fetch turbo" in _one_line(str(err.value))
    assert hub.cached("turbo") is None
    (row,) = hub.list_models()
    assert (row.path, row.size, row.sha256) == (None, None, None)


def test_a_file_changed_after_download_is_caught(fake):
    path = hub.fetch("turbo", endpoint=fake.endpoint)
    data = bytearray(path.read_bytes())
    data[7] ^= 1
    path.write_bytes(bytes(data))
    assert hub.cached("turbo") == path  # same size: only the sha256 tells
    with pytest.raises(CheckpointError, match="--force"):
        hub.cached("turbo", verify=True)
    path.write_bytes(bytes(data[:-1]))
    assert hub.cached("turbo") is None  # wrong size: not cached at all


def test_an_endpoint_without_sha256_or_unreachable_is_one_line(fake):
    fake.etag = None
    with pytest.raises(CheckpointError, match="no sha256") as err:
        hub.fetch("turbo", endpoint=fake.endpoint)
    _one_line(str(err.value))
    with pytest.raises(CheckpointError, match=f"cannot get {REPO}/{FILE} from {DEAD}") as err:
        hub.fetch("turbo")  # the default endpoint (HF_ENDPOINT), here a closed port
    _one_line(str(err.value))
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        hub.fetch("nope")
    with pytest.raises(ConfigError, match="shipped"):
        hub.fetch("demo")


def test_no_room_or_no_cache_folder_is_one_line(fake, monkeypatch, tmp_path):
    with monkeypatch.context() as m:
        m.setattr(hub.shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))
        with pytest.raises(CheckpointError, match=r"300.0 KB to download but 1.0 KB free") as err:
            hub.fetch("turbo", endpoint=fake.endpoint)
    _one_line(str(err.value))

    fake.requests.clear()
    (tmp_path / "a_file").write_bytes(b"")
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "a_file"))
    with pytest.raises(CheckpointError, match=f"cannot create the cache folder .*set {hub.CACHE_ENV}") as err:
        hub.fetch("turbo", endpoint=fake.endpoint)
    _one_line(str(err.value))
    assert fake.requests == []  # a local problem is found before any request


def test_cli_fetch_list_path(fake, capsys):
    assert weights_cli.main(["fetch", "turbo", "--endpoint", fake.endpoint]) == 0
    out, err = capsys.readouterr()
    path = _folder() / FILE
    assert out.strip() == str(path) and "300.0 KB" in err  # the size is shown
    assert weights_cli.main(["path", "turbo", "--verify"]) == 0
    assert capsys.readouterr().out.strip() == str(path)
    assert weights_cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert str(path) in out and "300.0 KB" in out and "demo" in out
    assert weights_cli.main(["list", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["path"] == str(path) and row["sha256"] == fake.etag

    from sammoe.cli import main as sammoe_main

    assert sammoe_main(["weights", "path", "turbo"]) == 0
    assert capsys.readouterr().out.strip() == str(path)


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["path", "turbo"], "sammoe weights fetch turbo"),
        (["fetch", "nope"], "unknown model 'nope'"),
        (["fetch", "demo"], "shipped"),
        (["fetch"], "sammoe weights --help"),
        (["fetch", "turbo", "--endpoint", DEAD], "cannot get"),
    ],
)
def test_cli_errors_are_one_line_and_status_2(argv, expected, capsys):
    assert weights_cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and expected in _one_line(err) and err.startswith("sammoe: error: ")


def test_cli_reports_a_corrupted_download_in_one_line(fake, capsys):
    fake.served = bytes(SIZE)
    assert weights_cli.main(["fetch", "turbo", "--endpoint", fake.endpoint]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the size line and the progress bar
    assert last.startswith("sammoe: error: turbo: downloaded weights.pth has sha256")
    assert "sammoe weights fetch turbo" in last
