"""The network side of ``sammoe weights fetch``: what the hub says of a file, and the download itself,
resumable, with a time limit per read, for each answer (the metadata, the headers before the bytes) and for
the whole fetch, so a server that drips bytes, each within the read timeout, is stopped. The requests run in
a worker thread that the caller waits for until the limit (an HTTP client has no limit on a whole answer).
Nothing here touches the cache; ``sammoe.hub.fetch`` does."""

from __future__ import annotations

import contextlib
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sammoe.environment import seconds_from_env
from sammoe.errors import CheckpointError

if TYPE_CHECKING:
    from sammoe.hub import ModelEntry

READ_TIMEOUT_ENV = "SAMMOE_FETCH_TIMEOUT"  # seconds one network read may wait for bytes
ANSWER_ENV = "SAMMOE_FETCH_ANSWER_TIMEOUT"  # seconds one answer (its status and headers) may take in all
BUDGET_ENV = "SAMMOE_FETCH_BUDGET"  # seconds a whole fetch may take (a server that drips bytes)
READ_TIMEOUT, ANSWER_TIMEOUT, BUDGET = 30.0, 60.0, 4 * 3600.0
MAX_SIZE = 20 * 10**9  # a hub that announces more than this for one weights file is not believed
_TRIES = 3  # attempts in a row that bring no new byte before a download gives up


def human_size(size: int | None) -> str:
    if size is None:
        return "?"
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def _network_errors() -> tuple[type[BaseException], ...]:
    # huggingface_hub's own HTTP errors (and requests', its client before 1.0) are OSErrors; httpx and httpx2,
    # its clients since, raise their own transport errors. Catch exactly these, so a bug still shows a
    # traceback.
    errors: list[type[BaseException]] = [OSError]
    for client in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError, AttributeError):
            errors.append(import_module(client).HTTPError)
    return tuple(errors)


def _why(err: BaseException) -> str:
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


@dataclass(frozen=True)
class _Remote:
    url: str  # where the bytes are (a CDN url when the hub redirects)
    sha256: str
    size: int
    commit: str | None


def _remote(
    name: str, entry: ModelEntry, endpoint: str | None, read_timeout: float, answer_by: float
) -> _Remote:
    """What the hub says of the file; its answer must be complete by ``answer_by`` (time.monotonic)."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url

    endpoint = endpoint.rstrip("/") if endpoint else None  # a trailing slash would double in the URL
    base = endpoint or constants.ENDPOINT
    url = hf_hub_url(entry.repo, entry.file, revision=entry.revision, endpoint=endpoint)
    try:
        meta = _by(lambda: get_hf_file_metadata(url, timeout=read_timeout), url, answer_by)
    except NoAnswer:
        raise _no_answer(name, url) from None
    except (*_network_errors(), ValueError) as err:  # ValueError: a header that is not a number
        raise CheckpointError(
            f"{name}: cannot get {entry.repo}/{entry.file} from {base} ({_why(err)}); check the network, or "
            "choose a mirror with --endpoint URL (or HF_ENDPOINT)"
        ) from err
    sha = (meta.etag or "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", sha) or meta.size is None:
        raise CheckpointError(
            f"{name}: {base} gives no sha256 and size for {entry.repo}/{entry.file} (ETag {meta.etag!r}), "
            "so a download could not be checked; point --endpoint (or HF_ENDPOINT) at a Hugging Face hub"
        )
    if not 0 < meta.size <= MAX_SIZE:
        raise CheckpointError(
            f"{name}: {base} gives {entry.repo}/{entry.file} a size of {meta.size} bytes, not between 1 byte "
            f"and {human_size(MAX_SIZE)}; the answer is wrong, point --endpoint (or HF_ENDPOINT) at a hub"
        )
    return _Remote(url=meta.location, sha256=sha, size=meta.size, commit=meta.commit_hash)


class _Overdue(Exception):
    """The download took longer than its time budget."""


class NoAnswer(Exception):
    """A request whose answer did not arrive in full in time (``url``)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


def answer_limit() -> float:
    return seconds_from_env(ANSWER_ENV, ANSWER_TIMEOUT)


def _no_answer(name: str, url: str, then: str = "") -> CheckpointError:
    """The one line for a server whose answer trickles in past the limit."""
    return CheckpointError(
        f"{name}: {url} did not answer in full within {answer_limit():g} s ({ANSWER_ENV}); check the network "
        f"and --endpoint, or raise {ANSWER_ENV}{then}"
    )


def _by(
    call: Callable[[], Any],
    url: str,
    answer_by: float,
    deadline: float | None = None,
    answered: threading.Event | None = None,
) -> Any:
    """``call()`` in a worker thread (a daemon, left to its own read timeout if it is given up on): its
    result, or its exception. Its answer must be in by ``answer_by`` (time.monotonic): the call sets
    ``answered`` when its headers are in, or, without one, the whole call is the answer; else ``NoAnswer``.
    It must end by ``deadline``, else ``_Overdue``."""
    answered = answered or threading.Event()
    finished, done = threading.Event(), {}

    def work() -> None:
        try:
            done["value"] = call()
        except BaseException as err:  # handed to the waiting thread
            done["error"] = err
        finally:
            answered.set()
            finished.set()

    threading.Thread(target=work, name="sammoe-fetch", daemon=True).start()
    if not answered.wait(max(0.0, answer_by - time.monotonic())):
        raise NoAnswer(url)
    if not finished.wait(max(0.0, (answer_by if deadline is None else deadline) - time.monotonic())):
        raise _Overdue
    if "error" in done:
        raise done["error"]
    return done.get("value")


class _TooLong(Exception):
    """The server sent more bytes than the file has."""


def _stream(remote: _Remote, handle: Any, read_timeout: float, deadline: float, bar: Any) -> None:
    """One GET of the bytes ``handle`` lacks, appended as they arrive, in a worker thread. Each read waits at
    most ``read_timeout``, the answer's headers must be in by ``answer_limit()`` and the bytes by
    ``deadline`` (time.monotonic), so a server that drips bytes cannot hold the download forever. What was
    written stays: every prefix of the file is resumable."""
    answered, stop = threading.Event(), threading.Event()
    answer_by = min(time.monotonic() + answer_limit(), deadline)

    def get() -> None:
        from huggingface_hub.utils import get_session, hf_raise_for_status

        done = handle.tell()
        headers = {"Accept-Encoding": "identity"}
        if done:
            headers["Range"] = f"bytes={done}-"
        with get_session().stream(
            "GET", remote.url, headers=headers, timeout=read_timeout, follow_redirects=True
        ) as response:
            answered.set()
            hf_raise_for_status(response)
            if done and response.status_code == 200:  # the server ignored the Range: the whole file comes
                handle.seek(0)
                handle.truncate()
                bar.update(-done)
                done = 0
            for piece in response.iter_bytes():  # pieces as they arrive
                if stop.is_set():  # the waiting thread gave up: nothing more is written
                    return
                if done + len(piece) > remote.size:
                    raise _TooLong
                handle.write(piece)
                done += len(piece)
                bar.update(len(piece))
        if done != remote.size:
            raise OSError(f"the connection ended at {done} of {remote.size} bytes")

    try:
        _by(get, remote.url, answer_by, deadline, answered)
    except (NoAnswer, _Overdue):
        stop.set()  # the worker writes nothing more
        raise


def _download(name: str, entry: ModelEntry, remote: _Remote, part: Path, limits: tuple[float, float]) -> None:
    """Append the missing bytes to ``part`` with Range requests; a dropped or stalled connection is resumed
    where it stopped (``_TRIES`` times in a row without a new byte), within the time budget of ``limits``
    (read timeout, deadline)."""
    from huggingface_hub.utils import tqdm

    read_timeout, deadline = limits
    tries = 0
    have = part.stat().st_size if part.exists() else 0
    try:
        with (
            open(part, "ab") as handle,
            tqdm(
                total=remote.size, initial=have, unit="B", unit_scale=True, desc=entry.file, file=sys.stderr
            ) as bar,
        ):
            while True:
                before = handle.tell()
                try:
                    _stream(remote, handle, read_timeout, deadline, bar)
                    return
                except _network_errors() as err:
                    handle.flush()
                    tries = 1 if handle.tell() > before else tries + 1
                    if tries >= _TRIES or time.monotonic() > deadline or not _transient(err):
                        raise
                    time.sleep(min(1.0, read_timeout))
    except _Overdue:
        have = part.stat().st_size
        raise CheckpointError(
            f"{name}: download of {entry.file} too slow, {human_size(have)} of {human_size(remote.size)} in "
            f"{seconds_from_env(BUDGET_ENV, BUDGET):g} s ({BUDGET_ENV}); run `sammoe weights fetch {name}` "
            "again to resume, or raise the budget"
        ) from None
    except NoAnswer as late:
        raise _no_answer(name, late.url, f"; `sammoe weights fetch {name}` resumes the download") from None
    except _TooLong:
        part.unlink(missing_ok=True)  # more bytes than the file has: nothing in it is worth resuming
        raise CheckpointError(
            f"{name}: the server sent more than the {human_size(remote.size)} of {entry.file}; the download "
            f"was deleted, run `sammoe weights fetch {name}` again or choose another --endpoint"
        ) from None
    except _network_errors() as err:
        have = part.stat().st_size if part.exists() else 0
        raise CheckpointError(
            f"{name}: download of {entry.file} stopped at {human_size(have)} of {human_size(remote.size)} "
            f"({_why(err)}); run `sammoe weights fetch {name}` again to resume"
        ) from err


def _transient(err: BaseException) -> bool:
    """A dropped, refused or timed-out connection (worth resuming at once), not an HTTP error status."""
    return getattr(err, "response", None) is None  # HTTP errors (HfHubHTTPError) carry the response
