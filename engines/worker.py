"""Run an engine in a worker process, possibly under another interpreter, and restart it on a crash.

The TensorRT bindings exist only for each JetPack's system Python, so an engine may run in a
child started with another interpreter (``engine.python: /usr/bin/python3``). The child runs
``birdd.engines.runtime`` as a folder (``python .../engines/runtime``): the same model code the
in-process engines use, which imports nothing from birdd (only numpy and the runtime) and keeps
to Python 3.6. The same boundary serves the CPU engines, so it is tested on every machine.

The two talk over the child's stdin/stdout in length-prefixed frames (``runtime/frames.py``): a
JSON header and the raw float32 array. A child that dies or stops answering while it scores a
batch is killed, restarted (at most ``max_restarts`` times per ``restart_window_s``) and given
the same batch once more, so no window is lost; only when that fails too does ``predict`` raise
one ``BatchFailed`` line (the next batch restarts the child, still within the bound). ``infer``
asks for the scores and the embeddings of one invoke in one request.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np

from birdd.engines.base import Engine, EngineConfig, Outputs, model_request
from birdd.engines.errors import BatchFailed, EngineError, from_reply
from birdd.engines.models.artifact import ModelArtifact
from birdd.engines.runtime.frames import FRAME, PROTOCOL, frame_head, parse_header

log = logging.getLogger(__name__)

RUNTIME_DIR = Path(__file__).resolve().with_name("runtime")  # run as a folder: its __main__.py
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_BYTES = 1 << 20
WORKER_ENGINES = ("tflite", "onnx", "tensorrt")


def split_arrays(body: bytearray, shapes: Sequence[Sequence[int]]) -> List[np.ndarray]:
    """The float32 arrays of ``shapes`` laid one after another in a reply's payload."""
    arrays, offset = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        flat = np.frombuffer(body, dtype="<f4", count=size, offset=offset * 4)
        arrays.append(flat.reshape([int(n) for n in shape]))
        offset += size
    return arrays


class WorkerDied(BatchFailed):
    """The child exited, closed its pipes or stopped answering; a restart may help."""


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


class WorkerProcess:
    """One worker process: its pipes, a thread draining its stderr, and framed calls."""

    def __init__(self, python: str, env: Optional[Dict[str, str]] = None) -> None:
        try:
            self.process = subprocess.Popen(
                [python, str(RUNTIME_DIR)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                close_fds=True,
                env=env,
            )
        except OSError as exc:
            raise EngineError(
                f"cannot start the engine worker with {python}: {exc.strerror or exc}: "
                "set engine.python to an interpreter that exists"
            ) from None
        self.pid = self.process.pid
        self.stderr_lines: Deque[str] = collections.deque(maxlen=50)
        self._drain = threading.Thread(
            target=self._drain_stderr, name=f"engine-worker-{self.pid}-stderr", daemon=True
        )
        self._drain.start()
        assert self.process.stdin is not None and self.process.stdout is not None
        self._in = self.process.stdin.fileno()
        self._out = self.process.stdout.fileno()
        os.set_blocking(self._in, False)
        for fd in (self._in, self._out):  # fewer wake-ups per batch (Linux; best effort)
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)

    def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        for raw in iter(self.process.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self.stderr_lines.append(line)
                log.debug("engine worker %d: %s", self.pid, line)

    def last_stderr_line(self) -> str:
        self._drain.join(timeout=1.0)
        for line in reversed(self.stderr_lines):
            if line.strip():
                return line.strip()
        return "nothing on its stderr"

    def exit_description(self) -> str:
        try:
            code = self.process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return "still running"
        if code < 0:
            return f"exit code {code}, {_signal_name(code)}"
        return f"exit code {code}"

    # -- framed calls ------------------------------------------------------------------------

    def call(
        self,
        header: Dict[str, Any],
        payload: Optional[np.ndarray],
        timeout_s: float,
        on_sent: Optional[Callable[[int], None]] = None,
    ) -> Tuple[Dict[str, Any], bytearray]:
        """Send one request and wait for its reply; raise WorkerDied on EOF, EPIPE or timeout."""
        deadline = time.monotonic() + timeout_s
        data = memoryview(b"") if payload is None else payload.data.cast("B")
        self._write(memoryview(frame_head(header, len(data))), deadline)
        if len(data):
            self._write(data, deadline)
        if on_sent is not None:
            on_sent(self.pid)
        head = self._read(FRAME.size, deadline)
        header_size, payload_size = FRAME.unpack(bytes(head))
        reply = parse_header(self._read(header_size, deadline))
        return reply, self._read(payload_size, deadline)

    def _wait(self, fd: int, writing: bool, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        ready = select.select([], [fd], [], left) if writing else select.select([fd], [], [], left)
        if not (ready[1] if writing else ready[0]):
            raise TimeoutError

    def _write(self, view: memoryview, deadline: float) -> None:
        while len(view):
            self._wait(self._in, True, deadline)
            try:
                written = os.write(self._in, view)
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise EOFError from exc
            view = view[written:]

    def _read(self, size: int, deadline: float) -> bytearray:
        buffer = bytearray(size)
        view = memoryview(buffer)
        done = 0
        while done < size:
            self._wait(self._out, False, deadline)
            count = os.readv(self._out, [view[done:]])
            if count == 0:
                raise EOFError
            done += count
        return buffer

    def stop(self, timeout_s: float = 2.0) -> None:
        """Ask the child to exit (close op, then EOF on stdin); kill it if it does not."""
        if self.process.poll() is None:
            with contextlib.suppress(EOFError, TimeoutError, OSError, ValueError):
                self.call({"op": "close"}, None, min(timeout_s, 1.0))
        for stream in (self.process.stdin, self.process.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self._drain.join(timeout=1.0)
        if self.process.stderr is not None:
            self.process.stderr.close()

    def kill(self, exiting: bool = False) -> None:
        """Kill the child. ``exiting``: its pipe just closed, so it is most likely on its way
        out; give it a second to exit by itself, so that its own exit status is reported."""
        if exiting:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=1.0)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


class WorkerEngine(Engine):
    """An engine (tflite, onnx or tensorrt) run in a child process started with ``python``.

    ``restarts`` counts the times a dead or stuck child was replaced; ``worker_info`` is what
    the child said at load (pid, runtime, protocol, its Python and numpy versions). The
    TensorRT engine's subclass (``TensorRTWorkerEngine``) first has the child find or build
    the plan.
    """

    type = "worker"
    config_class = EngineConfig
    model_formats: ClassVar[Optional[Tuple[str, ...]]] = None  # None: the engine's own format

    def __init__(
        self,
        inner_config: EngineConfig,
        artifact: ModelArtifact,
        python: str = sys.executable,
        timeout_s: float = 30.0,
        load_timeout_s: float = 120.0,
        max_restarts: int = 3,
        restart_window_s: float = 60.0,
    ) -> None:
        inner_type = getattr(inner_config, "type", None)
        if inner_type not in WORKER_ENGINES:
            raise EngineError(
                f"engine type {inner_type!r} cannot run in a worker process: "
                f"use {' or '.join(WORKER_ENGINES)}"
            )
        if artifact.format not in (self.model_formats or (inner_type,)):
            raise EngineError(
                f"model {artifact.path.name} is in {artifact.format} format but engine.type is "
                f"{inner_type}: choose engine.type {artifact.format} or another model"
            )
        super().__init__(inner_config, artifact)
        self.inner_type: str = inner_type
        self.python = python
        self.timeout_s = timeout_s
        self.load_timeout_s = max(load_timeout_s, timeout_s)
        self.max_restarts = max_restarts
        self.restart_window_s = restart_window_s
        self.restarts = 0
        self.worker_info: Dict[str, Any] = {}
        self._restart_times: Deque[float] = collections.deque()
        self._child: Optional[WorkerProcess] = None
        self._loaded = False
        self._lock = threading.RLock()
        self._on_sent: Optional[Callable[[int], None]] = None  # tests: act mid-batch

    @classmethod
    def probe(cls) -> str:
        return f"worker process ({RUNTIME_DIR.name}) under {sys.executable}"

    @property
    def pid(self) -> Optional[int]:
        return self._child.pid if self._child is not None else None

    def load(self) -> None:
        with self._lock:
            self._stop_child()
            self._loaded = False
            self._child = self._start()
            self._loaded = True

    def _start(self) -> WorkerProcess:
        """Start a child and load the model in it; one EngineError line on any failure."""
        child = WorkerProcess(self.python)
        batch = self.input_spec.max_batch
        try:
            self._prepare(child)
            request = model_request(self.inner_type, self.config, self.artifact, batch)
            reply = self._ask(child, {"op": "load", **request}, self.load_timeout_s)
        except (EOFError, TimeoutError, OSError, ValueError) as exc:
            raise self._lost(child, exc, f"loading {self.artifact.path.name}") from None
        except EngineError:  # refused (the child is stopped), or a plan that cannot be had
            child.stop()
            raise
        self.worker_info = {key: value for key, value in reply.items() if key != "ok"}
        log.info(
            "engine worker %d (Python %s, %s, %s) loaded %s",
            child.pid,
            reply.get("python"),
            self.python,
            reply.get("runtime"),
            self.artifact.path.name,
        )
        return child

    def _prepare(self, child: WorkerProcess) -> None:
        """Anything the child must do before it loads the model (TensorRT: the plan)."""

    def _ask(
        self, child: WorkerProcess, header: Dict[str, Any], timeout_s: float
    ) -> Dict[str, Any]:
        """The reply of a fresh child to a request that is not a batch; a refusal, or a child
        that speaks another protocol, stops it and is one EngineError line."""
        reply, _ = child.call(header, None, timeout_s)
        if not reply.get("ok"):
            child.stop()
            raise from_reply(str(reply.get("kind")), str(reply.get("error", reply)))
        if reply.get("protocol") != PROTOCOL:
            child.stop()
            raise EngineError(
                f"the engine worker ({self.python}) speaks protocol {reply.get('protocol')} but "
                f"this birdd speaks {PROTOCOL}: birdd was upgraded while running; restart it"
            )
        return reply

    def _lost(self, child: WorkerProcess, exc: Exception, doing: str) -> EngineError:
        """The one line for a child that died or timed out while ``doing`` something."""
        timed_out = isinstance(exc, TimeoutError)
        child.kill(exiting=not timed_out)
        what = "timed out" if timed_out else "died"
        return EngineError(
            f"engine worker ({self.python}) {what} ({child.exit_description()}) while "
            f"{doing}: {child.last_stderr_line()}"
        )

    def _stop_child(self) -> None:
        if self._child is not None:
            child, self._child = self._child, None
            child.stop()

    def _restart(self, reason: str) -> None:
        now = time.monotonic()
        while self._restart_times and now - self._restart_times[0] > self.restart_window_s:
            self._restart_times.popleft()
        if len(self._restart_times) >= self.max_restarts:
            raise EngineError(
                f"{reason}; not restarting it again: it failed {len(self._restart_times) + 1} "
                f"times within {self.restart_window_s:.0f} s"
            )
        self._restart_times.append(now)
        self.restarts += 1
        log.warning("%s; restarting it (restart %d)", reason, self.restarts)
        self._child = self._start()

    def _call_once(self, roles: Sequence[str], batch: np.ndarray) -> List[np.ndarray]:
        child = self._child
        if child is None:
            raise EngineError(f"{self.inner_type} engine worker used before load()")
        header = {"op": "run", "roles": list(roles), "shape": list(batch.shape), "dtype": "float32"}
        try:
            reply, body = child.call(header, batch, self.timeout_s, self._on_sent)
        except (EOFError, TimeoutError, OSError, ValueError) as exc:
            timed_out = isinstance(exc, TimeoutError)
            child.kill(exiting=not timed_out)
            self._child = None
            what = (
                f"did not answer within {self.timeout_s:g} s (killed it)"
                if timed_out
                else f"died ({child.exit_description()})"
            )
            raise WorkerDied(
                f"engine worker {what} while scoring a batch: {child.last_stderr_line()}"
            ) from None
        if not reply.get("ok"):
            raise BatchFailed(str(reply.get("error", reply)))
        return split_arrays(body, reply["shapes"])

    def _run(self, roles: Sequence[str], batch: np.ndarray) -> List[np.ndarray]:
        problem = self._check_batch(batch)
        if problem:
            raise EngineError(f"{self.inner_type} engine worker: {problem}")
        feed = np.ascontiguousarray(batch, dtype="<f4")
        with self._lock:
            if not self._loaded:
                raise EngineError(
                    f"{self.inner_type} engine worker used before load() or after close()"
                )
            try:
                if self._child is None:  # the last restart failed: try again, still bounded
                    self._restart("engine worker is not running")
                return self._call_once(roles, feed)
            except WorkerDied as died:
                self._restart(str(died))
                return self._call_once(roles, feed)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self._run(("scores",), batch)[0]

    def infer(self, batch: np.ndarray) -> Outputs:
        scores, embeddings = self._run(("scores", "embeddings"), batch)
        return Outputs(scores, embeddings)

    def close(self) -> None:
        with self._lock:
            self._loaded = False
            self._stop_child()

    def __del__(self) -> None:  # pragma: no cover - a forgotten close() must not leak a child
        child = getattr(self, "_child", None)
        if child is not None and child.process.poll() is None:
            child.process.kill()
