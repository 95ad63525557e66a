"""``birdd analyze PATH… --ray [ADDRESS]``: the job's files analysed on a Ray cluster.

Only the distribution of files changes: planning, resume keys, the store, the outputs and the
exit codes stay ``job.py``'s, and every file runs through the same ``FileAnalyser`` as in a
local worker. The Ray Data pipeline:

1. a dataset of the planned files (index, path, modification time), one block per file;
2. a reader pinned to the driver's node that adds the file's bytes: the recordings are on
   the driver's machine and no shared filesystem is assumed, so the bytes travel through
   the object store (Ray Data's backpressure bounds how many are in flight). The readers are
   actors, not tasks: Ray keeps no more idle workers than CPUs, so the worker of a
   zero-CPU read task was ended between files and a new one started (a Python process
   importing Ray and birdd, ~1.4 CPU-seconds) for one file in four;
3. ``map_batches`` with ``AnalyserActor``, a pool of N actors: each writes the model shipped
   through the object store into its own temporary folder, loads the engine once, and
   analyses whole files from their bytes (decoding streams from memory);
4. the results, streamed back to the driver as each file finishes, in any order: a result
   carries the file's index in the job, which puts it in place.

Ray is an optional extra (``birdd[ray]``), imported only here and only for ``--ray``.
"""

from __future__ import annotations

import logging
import pickle
import shutil
import socket
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Generator, Iterator, Optional, Sequence

import numpy as np

from birdd.daemon.analyze.worker import FileAnalyser, FileResult, FileTask
from birdd.daemon.config import BirddConfig
from birdd.daemon.records import RunInfo
from birdd.engines.base import Engine
from birdd.engines.models.artifact import sidecar_path
from birdd.engines.models.location import location_model_beside
from birdd.engines.models.modeldir import write_manifest
from birdd.engines.registry import create_engine

log = logging.getLogger("birdd")

RAY_MISSING = "--ray needs Ray, an optional extra: pip install 'birdd[ray]'"
READERS = 2
"""Reader actors (reading a file is I/O; they reserve no CPU, so take none from the analysers)."""
PROBE_TIMEOUT_S = 5.0


class RayJobError(RuntimeError):
    """The cluster failed mid-job (a task or actor died, a node was lost): exit 1."""


def import_ray() -> Any:
    """The ``ray`` module with Ray Data; ValueError (one line, exit 2) when not installed."""
    try:
        import ray
        import ray.data  # ray[data] is what the extra installs
    except ImportError:
        raise ValueError(RAY_MISSING) from None
    return ray


@dataclass(frozen=True)
class ModelBundle:
    """The model files an actor needs, by name, with their paths on the driver's machine:
    the classifier and its sidecar, and the location model (with a manifest naming it) when
    the location filter is on."""

    classifier: str
    paths: Dict[str, str]
    manifest: Optional[Dict[str, Dict[str, str]]] = None

    def read(self) -> Dict[str, bytes]:
        """The files' bytes (a task on the driver's node: they reach the actor through the
        object store)."""
        return {name: Path(path).read_bytes() for name, path in self.paths.items()}

    def unpack(self, files: Dict[str, bytes], folder: Path) -> Path:
        """Write the files into ``folder``; return the classifier's path there."""
        for name, data in files.items():
            (folder / name).write_bytes(data)
        if self.manifest is not None:
            write_manifest(folder, self.manifest)
        return folder / self.classifier


def model_bundle(config: BirddConfig, engine: Engine) -> ModelBundle:
    """The loaded engine's model files; ValueError for what an actor could not load alone."""
    artifact = engine.artifact
    if artifact.kind != "classifier" or config.postprocess.gate is not None:
        raise ValueError(
            f"--ray ships a classifier model (and its location model) to the workers; "
            f"{artifact.path.name} is a {artifact.kind}"
            f"{' and a gate is set' if config.postprocess.gate is not None else ''}: "
            "analyse with local workers (drop --ray)"
        )
    paths = [artifact.path, sidecar_path(artifact.path)]
    manifest = None
    location = location_model_beside(artifact.path)
    if config.postprocess.location is not None and location is not None:
        paths += [location, sidecar_path(location)]
        manifest = {"location": {"tflite": location.name}}
    named = {path.name: str(path.resolve()) for path in paths}
    return ModelBundle(artifact.path.name, named, manifest)


def _read_bundle(bundle: ModelBundle) -> Dict[str, bytes]:
    return bundle.read()


class AnalyserActor:
    """One actor of the pool: the model fetched from the driver's node into a temporary
    folder of its own, the engine loaded once, then file after file from its bytes.

    An engine that cannot load makes every file's result fatal, as a local worker's does.
    The model is fetched by a task rather than passed in: Ray Data restarts a crashed actor,
    and a restarted actor can always fetch it again."""

    def __init__(
        self, config: BirddConfig, run: RunInfo, bundle: ModelBundle, driver: Dict[str, str]
    ) -> None:
        import ray

        folder = Path(tempfile.mkdtemp(prefix="birdd-ray-"))
        weakref.finalize(self, shutil.rmtree, folder, True)
        read = ray.remote(_read_bundle).options(num_cpus=0, label_selector=driver)
        model = bundle.unpack(ray.get(read.remote(bundle)), folder)
        engine_config = config.engine.model_copy(update={"model": str(model)})
        config = config.model_copy(update={"engine": engine_config})
        self.error: Optional[str] = None
        self.analyser: Optional[FileAnalyser] = None
        try:
            engine = create_engine(engine_config.for_mode(live=False))
        except Exception as exc:
            self.error = str(exc)
        else:
            self.analyser = FileAnalyser(config, engine, run)

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        results = [self.analyse(row) for row in _rows(batch)]
        return {"result": np.array([pickle.dumps(result) for result in results], dtype=object)}

    def analyse(self, row: Dict[str, Any]) -> FileResult:
        index, path = int(row["index"]), str(row["path"])
        if self.analyser is None:
            return FileResult(index, path, error=self.error, fatal=True)
        if row["error"]:
            return FileResult(index, path, error=str(row["error"]))
        task = FileTask(index, Path(path), bytes(row["data"]), int(row["mtime_ns"]))
        return self.analyser.analyse(task)


def _rows(batch: Dict[str, np.ndarray]) -> Iterator[Dict[str, Any]]:
    columns = list(batch)
    for values in zip(*(batch[column] for column in columns)):
        yield dict(zip(columns, values))


class FileReader:
    """A reader actor (on the driver's node): adds each file's bytes, or why they cannot be
    read, to its row."""

    def __call__(self, row: Dict[str, Any]) -> Dict[str, Any]:
        try:
            row["data"], row["error"] = Path(row["path"]).read_bytes(), ""
        except OSError as exc:
            row["data"], row["error"] = b"", f"cannot read {row['path']}: {exc.strerror or exc}"
        return row


class RayCluster:
    """A connection to a Ray cluster (``address`` "": a local one started by ``ray.init``)
    and the size of the actor pool the job runs on it."""

    def __init__(self, address: str, workers: int, threads: int) -> None:
        self.ray = import_ray()
        self.address = address
        _connect(self.ray, address)
        cpus = int(self.ray.cluster_resources().get("CPU", 0))
        self.threads = threads
        self.workers = workers or max(1, cpus // threads)
        if self.workers * threads > cpus:
            self.ray.shutdown()
            raise ValueError(
                f"--ray {address or '(local)'}: {self.workers} worker(s) of {threads} thread(s) "
                f"need {self.workers * threads} CPUs, the cluster has {cpus}: give fewer "
                "--workers or --threads"
            )

    def results(
        self,
        config: BirddConfig,
        run: RunInfo,
        bundle: ModelBundle,
        files: Sequence[Path],
        mtimes_ns: Sequence[int],
    ) -> Generator[FileResult, None, None]:
        """Each file's result as it finishes, in any order."""
        ray = self.ray
        items = [
            {"index": index, "path": str(path), "mtime_ns": mtime}
            for index, (path, mtime) in enumerate(zip(files, mtimes_ns))
        ]
        here = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}  # the files' node
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        dataset = dataset.map(
            FileReader,
            compute=ray.data.ActorPoolStrategy(size=min(READERS, len(items))),
            num_cpus=0,
            label_selector=here,
        )
        dataset = dataset.map_batches(
            AnalyserActor,
            compute=ray.data.ActorPoolStrategy(size=min(self.workers, len(items))),
            fn_constructor_args=(config, run, bundle, here),
            batch_size=1,
            num_cpus=self.threads,
        )
        try:
            for row in dataset.iter_rows():
                yield pickle.loads(row["result"])
        except ray.exceptions.RayError as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise RayJobError(
                f"the job failed on the Ray cluster ({lines[-1] if lines else type(exc).__name__})"
                "; rerun to resume: the files done so far are kept"
            ) from None

    def close(self) -> None:
        """Disconnect (a local cluster from ``ray.init()`` stops with it)."""
        self.ray.shutdown()


def _check_reachable(address: str) -> None:
    """Refuse a ``HOST:PORT`` nothing listens on, at once: ``ray.init`` would retry for
    minutes before it gives up."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", or a form Ray itself reports on
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise ValueError(
            f"--ray {address}: no Ray cluster answers there ({exc.strerror or exc}): start one "
            "with 'ray start --head' and give the address it prints (HOST:PORT or auto)"
        ) from None


def _connect(ray: Any, address: str) -> None:
    """``ray.init`` quietly: no progress bars or worker logs among birdd's own output."""
    _check_reachable(address)
    options: Dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if not address:
        options["include_dashboard"] = False
    try:
        ray.init(address or None, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"--ray {address}: cannot connect to a Ray cluster ({reason}): start one with "
            "'ray start --head' and give its address (HOST:6379 or auto)"
        ) from None
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its failures raise
