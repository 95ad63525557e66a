"""The clip uploader: SQLite's clips not yet on the hub → ``PUT`` → ``clip_uploaded_at``.

Guarantees, the MQTT outbox's: nothing is lost over an outage and each clip is stored once.
The queue is the detection database itself (``sqlite_uploads``), so a clip written while the
hub, the network or this process was down is sent when they are back, by this run or the next.
A clip is marked uploaded only after the hub answered 201 (stored) or 200 (it held this clip
already: a retry after a lost answer); the hub keys clips by detection id, so sending one
twice stores it once. A refusal that sending again cannot mend (a 400 naming the body, 409: the
hub holds another clip for that id, 413, 415) marks the clip failed with the hub's line, and
a file gone from the disk does too; everything else (no answer, 5xx, 401/403 until the token
is fixed) is retried, oldest clip first, after the shared capped backoff (``daemon.retry``).

One thread does the SQL and the HTTP; the pipeline never waits for it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, NamedTuple, Optional

from birdd.daemon.clips.config import UploadConfig
from birdd.daemon.clips.privacy import ClipsError
from birdd.daemon.netblock import SANDBOX_HINT, blocked_here
from birdd.daemon.retry import Backoff
from birdd.daemon.store.sqlite_store import StoreError
from birdd.daemon.store.sqlite_uploads import UnsentClip, UploadStore

log = logging.getLogger("birdd")

FETCH = 100
POLL_S = 1.0
"""How often an idle uploader looks for new clips (a clip waits at most this long)."""
TOKEN_CREDENTIAL = "clip-token"
DONE, FAILED, RETRY = "done", "failed", "retry"
FOR_GOOD = {400, 409, 411, 413, 415, 422}
"""Refusals that the same request would get again: the clip is marked failed."""


class Outcome(NamedTuple):
    kind: str
    detail: str


def classify(status: int, text: str) -> Outcome:
    """What an HTTP answer means for the clip: done, failed for good, or retry later."""
    if status in (200, 201):
        return Outcome(DONE, text)
    if status in FOR_GOOD:
        return Outcome(FAILED, f"HTTP {status}: {text}")
    return Outcome(RETRY, f"HTTP {status}: {text}")


def read_token(config: UploadConfig) -> str:
    """The station's upload token; ClipsError in one line when none is set or readable."""
    from_env = os.environ.get(config.token_env)
    if from_env:
        return from_env.strip()
    path = config.token_file
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if path is None and credentials and (Path(credentials) / TOKEN_CREDENTIAL).is_file():
        path = Path(credentials) / TOKEN_CREDENTIAL
    if path is None:
        raise ClipsError(
            f"clips.upload.url is set but there is no upload token: set {config.token_env} or "
            "clips.upload.token_file (this station's token in the hub's clips.tokens_file)"
        )
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ClipsError(
            f"clips.upload.token_file {path}: cannot read it ({exc.strerror})"
        ) from None
    if not token:
        raise ClipsError(f"clips.upload.token_file {path}: empty; put the station's token in it")
    return token


class ClipUploader:
    def __init__(self, db: Path, config: UploadConfig, token: str) -> None:
        if config.url is None:
            raise ValueError("ClipUploader needs clips.upload.url")
        self.url, self.config, self._token = config.url, config, token
        self._store = UploadStore(db)
        self._backoff = Backoff(config.retry_min_s, config.retry_max_s)
        self._wake, self._stopping = threading.Event(), threading.Event()
        self._idle = threading.Event()
        self.uploaded = 0
        self.failed = 0
        self.waiting = 0
        self._problem = ""
        self._thread = threading.Thread(target=self._run, name="clip uploader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def drain(self, timeout_s: float, cancel: threading.Event) -> bool:
        """Wait until no clip waits; False at the timeout or on ``cancel``."""
        self._idle.clear()
        self._wake.set()
        deadline = time.monotonic() + timeout_s
        while not cancel.is_set() and time.monotonic() < deadline:
            if self._idle.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
                return True
        return self._idle.is_set()

    def stop(self) -> int:
        """Stop the thread (an upload under way finishes or times out); return how many
        clips still wait."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(self.config.timeout_s + 5)
        try:
            self.waiting = self._store.backlog()  # for the last stats message
            return self.waiting
        finally:
            self._store.close()

    def stats(self) -> Dict[str, Any]:
        """``clip_uploads`` of the ``…/stats`` message (read from any thread): clips waiting,
        uploaded and failed for good in this run, and why uploads fail now (None when they
        do not)."""
        return {
            "clip_uploads": {
                "waiting": self.waiting,
                "uploaded": self.uploaded,
                "failed": self.failed,
                "problem": self._problem or None,
            }
        }

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._round()
            except StoreError as exc:  # a locked or failing database: tried again shortly
                log.warning("clips: the upload outbox: %s (tried again)", exc)
                self._stopping.wait(POLL_S)

    def _round(self) -> None:
        """Send the waiting clips in order until one must wait; idle when there are none."""
        clips = self._store.unsent(0, FETCH)
        self.waiting = len(clips) if len(clips) < FETCH else self._store.backlog()
        if not clips:
            self._idle.set()
            self._wake.wait(POLL_S)
            self._wake.clear()
            return
        for clip in clips:
            if self._stopping.is_set() or not self._one(clip):
                return
            self.waiting = max(0, self.waiting - 1)  # sent, or failed for good

    def _one(self, clip: UnsentClip) -> bool:
        """Send one clip and mark it; False when the hub could not take it now (after the
        backoff's wait)."""
        outcome = self._send(clip)
        if outcome.kind == DONE:
            self._store.mark_uploaded([clip.rowid])
            self.uploaded += 1
            self._recovered()
            return True
        if outcome.kind == FAILED:
            self._store.mark_failed(clip.rowid, outcome.detail)
            self.failed += 1
            log.warning(
                "clips: %s not uploaded, for good: %s", Path(clip.path).name, outcome.detail
            )
            return True
        self._failing(outcome.detail)
        self._stopping.wait(self._backoff.next())
        return False

    def _send(self, clip: UnsentClip) -> Outcome:
        try:
            data = Path(clip.path).read_bytes()
        except OSError as exc:
            return Outcome(FAILED, f"the clip's file cannot be read ({exc.strerror})")
        digest = hashlib.sha256(data).hexdigest()
        if clip.sha256 and digest != clip.sha256:
            return Outcome(FAILED, f"the file changed since it was written (SHA-256 {digest})")
        request = urllib.request.Request(
            f"{self.url}/api/clips/{clip.station}/{clip.detection_id}",
            data=data,
            method="PUT",
            headers={
                "Authorization": f"Bearer {self._token}",
                "Content-Type": "audio/flac",
                "X-Clip-SHA256": digest,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as answer:
                return classify(answer.status, _error_text(answer.read()))
        except urllib.error.HTTPError as error:
            return classify(error.code, _error_text(error.read()))
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            if blocked_here(exc):
                return Outcome(RETRY, f"{self.url}: {SANDBOX_HINT}")
            return Outcome(RETRY, f"{self.url} did not answer ({reason})")

    def _failing(self, problem: str) -> None:
        if problem != self._problem:
            log.warning(
                "clips: upload failed (%s); retrying with backoff up to %g s, the clips stay "
                "in the outbox",
                problem,
                self.config.retry_max_s,
            )
        self._problem = problem

    def _recovered(self) -> None:
        self._backoff.reset()
        if self._problem:
            log.warning("clips: uploads to %s resumed", self.url)
            self._problem = ""


def _error_text(body: bytes) -> str:
    """The hub's one-line ``error`` (or the body's start when it is not the hub's JSON)."""
    try:
        found = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(found, dict):
        return str(found.get("error") or found.get("result") or "")
    return ""


def build_uploader(db: Path, config: UploadConfig) -> Optional[ClipUploader]:
    """The uploader for ``clips.upload`` (None without a url); the token is read now."""
    if config.url is None:
        return None
    return ClipUploader(db, config, read_token(config))
