"""Benchmark every engine usable here on BirdNET V2.4: windows/s, ms per window, RTF, peak RSS.

For each engine type whose ``probe()`` succeeds (tflite, onnx, and any engine registered under
``birdd.engines``) × threads {1, 2} × batch {1, 2, 8} (and 64 for onnx when memory allows), and
for the original un-rewritten BirdNET TFLite model (the manifest's ``classifier_reference``) at
2 threads, batch 1 and 2, one fresh process:

- builds the engine with ``create_engine(Config(model=..., threads=..., batch_size=...))``;
- times the first ``predict`` after load on its own (the slow one), then one more warm-up call;
- scores real 3 s windows cut from the shared soundscapes ``--repeats`` times (default 3), at
  least ``--windows`` (default 128) windows each time, timing only ``engine.predict``;

and the parent takes the median repeat and the process's peak RSS (``wait4``). Prints a
markdown table and rewrites the engines section of docs/benchmarks.md.

    python bench/engines.py [--windows 128] [--repeats 3] [--no-docs] [--model FILE…]
                            [--models-only]

``--model`` adds rows for other model files (a student from ``birdd train distill``, .onnx on
ONNX Runtime, .tflite on TFLite) at 1 and 2 threads, batch 1 and 8; BirdNET's best-engine
summary leaves them out. ``--models-only`` times just those files and BirdNET V2.4 at the same
engines, threads and batches (no sweep, worker or reference rows; docs left alone): the
quick side-by-side for a student.

Recordings come from $BIRDD_TEST_AUDIO (default ../shared/audio relative to the repository).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from common import (
    RATE,
    audio_dir,
    decode_mono,
    host_lines,
    memory_gib,
    replace_section,
    run_measured,
    section_text,
    soundscapes,
    step,
    verdict,
)

WINDOW_S = 3.0
THREADS = (1, 2)
BATCHES = (1, 2, 8)
BIG_BATCH = 64
BIG_BATCH_ENGINES = ("onnx",)
BIG_BATCH_MIN_GIB = 4.0  # MemAvailable needed before trying the big batch
REFERENCE_ROLE = "classifier_reference"
REFERENCE_THREADS = 2
REFERENCE_BATCHES = (1, 2)
WORKER_ENGINES = ("tflite", "onnx")  # engine.python runs these in a worker on any machine
WORKER_THREADS = 2
WORKER_BATCHES = (1, 8)
MODEL = "birdnet"
MODEL_PREFIX = "BirdNET_GLOBAL_6K_V2.4_Model_"
TARGET_WINDOWS_PER_S = 100.0
CHILD_TIMEOUT_S = 150.0
PACKAGES = ("ai-edge-litert", "tflite-runtime", "onnxruntime", "onnxruntime-gpu", "numpy", "soxr")
ENGINES_START = "<!-- engines:start -->"
ENGINES_END = "<!-- engines:end -->"


# --------------------------------------------------------------------------- real windows


def whole_windows(mono: np.ndarray, window: int) -> np.ndarray:
    """The consecutive whole windows of one recording (a shorter tail is dropped)."""
    count = len(mono) // window
    return mono[: count * window].reshape(count, window)


def real_windows() -> np.ndarray:
    """Every whole 3 s window of the soundscapes, as 16-bit PCM ``int16[N, 144000]``."""
    window = round(WINDOW_S * RATE)
    cut = [whole_windows(decode_mono(path), window) for path in soundscapes()]
    windows = np.concatenate(cut)
    if len(windows) == 0:
        raise SystemExit(f"the soundscapes in {audio_dir()} hold no whole 3 s window")
    return np.round(np.clip(windows, -1.0, 1.0) * 32767).astype(np.int16)


# --------------------------------------------------------------------------- one configuration


@dataclass
class Plan:
    """One configuration, run in its own process."""

    engine: str
    model: str
    threads: Optional[int]
    batch: int
    windows: int
    repeats: int
    reference: bool = False
    worker: bool = False
    """Run the engine in a worker process (``engine.python``: this interpreter)."""

    def label(self) -> str:
        threads = (
            f"{self.threads} thread{'s' if self.threads > 1 else ''}"
            if self.threads
            else "default threads"
        )
        kind = "reference " if self.reference else ""
        where = ", in a worker process" if self.worker else ""
        return f"{kind}{self.engine}, {threads}, batch {self.batch}{where}"


@dataclass
class Timing:
    """What a child process measured."""

    model_file: str
    load_s: float
    first_call_s: float
    run_s: List[float]
    windows: int


def engine_config(plan: Plan) -> Any:
    from birdd.engines.registry import engine_classes

    config_class = engine_classes()[plan.engine].config_class
    settings: Dict[str, Any] = {"model": plan.model, "batch_size": plan.batch}
    if plan.threads is not None:
        settings["threads"] = plan.threads
    if plan.worker:
        settings["python"] = sys.executable
    return config_class(**settings)


def batches(windows: np.ndarray, count: int, batch: int) -> Iterator[np.ndarray]:
    """``count`` windows (cycling through ``windows``) as float32 batches of ``batch``."""
    for start in range(0, count, batch):
        rows = [(start + offset) % len(windows) for offset in range(batch)]
        yield windows[rows].astype(np.float32) / 32768.0


def timed_predict(engine: Any, batch: np.ndarray) -> float:
    began = time.perf_counter()
    engine.predict(batch)
    return time.perf_counter() - began


def run_plan_here(plan: Plan, windows: np.ndarray) -> Timing:
    """Load, first call, one warm-up call, then ``repeats`` passes over ``plan.windows``."""
    from birdd.engines.registry import create_engine

    began = time.perf_counter()
    engine = create_engine(engine_config(plan))
    load_s = time.perf_counter() - began
    first = next(batches(windows, plan.batch, plan.batch))
    first_call_s = timed_predict(engine, first)
    timed_predict(engine, first)
    run_s = []
    for _ in range(plan.repeats):
        run_s.append(
            sum(timed_predict(engine, b) for b in batches(windows, plan.windows, plan.batch))
        )
    model_file = engine.artifact.path.name
    engine.close()
    return Timing(model_file, load_s, first_call_s, run_s, plan.windows)


def child(plan_path: Path, windows_path: Path, result_path: Path) -> int:
    """The ``--child`` entry point: run one plan in this process, write its timing as JSON."""
    plan = Plan(**json.loads(plan_path.read_text(encoding="utf-8")))
    timing = run_plan_here(plan, np.load(windows_path))
    result_path.write_text(json.dumps(asdict(timing)), encoding="utf-8")
    return 0


# --------------------------------------------------------------------------- the parent


@dataclass
class Row:
    plan: Plan
    timing: Optional[Timing] = None
    peak_rss_mb: float = 0.0
    wall_s: float = 0.0
    note: str = ""

    @property
    def ms_per_window(self) -> float:
        if self.timing is None:
            return math.inf
        return statistics.median(self.timing.run_s) / self.timing.windows * 1000

    @property
    def windows_per_s(self) -> float:
        return 1000 / self.ms_per_window

    @property
    def rtf(self) -> float:
        """Real-time factor as the issue counts it: 3 s of audio / time to score it."""
        return WINDOW_S * 1000 / self.ms_per_window


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def run_plan(plan: Plan, windows_path: Path, folder: Path) -> Row:
    plan_path, result_path = folder / "plan.json", folder / "result.json"
    plan_path.write_text(json.dumps(asdict(plan)), encoding="utf-8")
    result_path.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--child"]
    command += [str(plan_path), str(windows_path), str(result_path)]
    run = run_measured(command, timeout_s=CHILD_TIMEOUT_S, check=False)
    row = Row(plan, peak_rss_mb=run.peak_rss_mb, wall_s=run.wall_s)
    if run.code != 0:
        why = f"killed after {CHILD_TIMEOUT_S:.0f} s" if run.code == -9 else f"exit {run.code}"
        row.note = f"failed ({why}): {last_line(run.stderr)}"
    else:
        row.timing = Timing(**json.loads(result_path.read_text(encoding="utf-8")))
    return row


@dataclass
class Engines:
    """The engine types found here: what each probe said, and the ones that failed."""

    usable: Dict[str, str] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)
    threaded: Dict[str, bool] = field(default_factory=dict)


def probe_engines() -> Engines:
    from birdd.engines.registry import engine_classes

    found = Engines()
    for name, engine_class in sorted(engine_classes().items()):
        try:
            found.usable[name] = engine_class.probe()
        except Exception as exc:  # a probe raises RuntimeMissingError, or worse
            found.skipped[name] = last_line(str(exc) or repr(exc))
        found.threaded[name] = "threads" in engine_class.config_class.model_fields
    return found


def windows_for(batch: int, wanted: int) -> int:
    """At least ``wanted`` windows, a whole number of batches."""
    return math.ceil(max(wanted, batch) / batch) * batch


def sweep(engines: Engines, windows: int, repeats: int) -> List[Plan]:
    plans = []
    for name in engines.usable:
        sizes = BATCHES + ((BIG_BATCH,) if name in BIG_BATCH_ENGINES else ())
        threads: Sequence[Optional[int]] = THREADS if engines.threaded[name] else (None,)
        for count in threads:
            for batch in sizes:
                plans.append(Plan(name, MODEL, count, batch, windows_for(batch, windows), repeats))
    return plans


def worker_plans(engines: Engines, windows: int, repeats: int) -> List[Plan]:
    """The CPU engines again behind the worker-process boundary a Jetson's TensorRT uses."""
    return [
        Plan(name, MODEL, WORKER_THREADS, batch, windows_for(batch, windows), repeats, worker=True)
        for name in engines.usable
        if name in WORKER_ENGINES
        for batch in WORKER_BATCHES
    ]


STUDENT_BATCHES = (1, 8)


def model_engine(model: Path) -> str:
    """The engine a model file's suffix names (as ``birdd --model FILE`` chooses it)."""
    return "tflite" if model.suffix == ".tflite" else "onnx"


def model_plans(models: Sequence[Path], windows: int, repeats: int) -> List[Plan]:
    """Rows for other model files (``--model``) on the engine each one's suffix names."""
    return [
        Plan(model_engine(model), str(model), threads, batch, windows_for(batch, windows), repeats)
        for model in models
        for threads in THREADS
        for batch in STUDENT_BATCHES
    ]


def birdnet_beside(models: Sequence[Path], windows: int, repeats: int) -> List[Plan]:
    """BirdNET V2.4 at the engines, threads and batches of the ``--model`` rows."""
    engines = sorted({model_engine(model) for model in models})
    return [
        Plan(engine, MODEL, threads, batch, windows_for(batch, windows), repeats)
        for engine in engines
        for threads in THREADS
        for batch in STUDENT_BATCHES
    ]


def reference_plans(engines: Engines, windows: int, repeats: int) -> Tuple[List[Plan], str]:
    """The original BirdNET TFLite model, or why it is not measured."""
    from birdd.engines.models.modeldir import resolve_model

    if "tflite" not in engines.usable:
        return [], "no TFLite runtime here"
    try:
        path = resolve_model(MODEL, "tflite", role=REFERENCE_ROLE)
    except Exception as exc:
        return [], last_line(str(exc))
    plans = [
        Plan("tflite", str(path), REFERENCE_THREADS, b, windows_for(b, windows), repeats, True)
        for b in REFERENCE_BATCHES
    ]
    return plans, ""


def run_all(plans: Sequence[Plan], windows: np.ndarray) -> List[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="engines-bench-") as name:
        folder = Path(name)
        windows_path = folder / "windows.npy"
        np.save(windows_path, windows)
        for index, plan in enumerate(plans, 1):
            step(f"{index}/{len(plans)} {plan.label()}, {plan.windows} windows × {plan.repeats}")
            if plan.batch >= BIG_BATCH and memory_gib("MemAvailable") < BIG_BATCH_MIN_GIB:
                note = f"skipped: MemAvailable {memory_gib('MemAvailable'):.1f} GiB"
                rows.append(Row(plan, note=f"{note} < {BIG_BATCH_MIN_GIB:g} GiB"))
                continue
            rows.append(run_plan(plan, windows_path, folder))
            if rows[-1].note:
                step(rows[-1].note)
    return rows


# --------------------------------------------------------------------------- report


@dataclass
class Results:
    rows: List[Row]
    engines: Engines
    reference_note: str
    distinct_windows: int
    windows_mb: float
    load_before: float
    load_after: float
    wall_s: float
    date: str

    def measured(self) -> List[Row]:
        return [row for row in self.rows if row.timing is not None]

    def in_process(self) -> List[Row]:
        """BirdNET's in-process rows (``--model`` rows are listed, not summarised)."""
        return [
            row
            for row in self.measured()
            if not row.plan.worker and (row.plan.model == MODEL or row.plan.reference)
        ]

    def best(self) -> Optional[Row]:
        rows = self.in_process()
        return max(rows, key=lambda row: row.windows_per_s) if rows else None

    def best_of(self, engine: str, reference: bool = False) -> Optional[Row]:
        rows = [r for r in self.in_process() if r.plan.engine == engine]
        rows = [r for r in rows if r.plan.reference == reference]
        return max(rows, key=lambda row: row.windows_per_s) if rows else None

    def twin(self, row: Row) -> Optional[Row]:
        """The in-process row of the same engine, model, threads and batch as a worker row."""
        for other in self.in_process():
            same = (other.plan.engine, other.plan.model, other.plan.threads, other.plan.batch)
            if not other.plan.reference and same == (
                row.plan.engine,
                row.plan.model,
                row.plan.threads,
                row.plan.batch,
            ):
                return other
        return None


def package_versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def machine(results: Results) -> List[str]:
    usable = "; ".join(f"{name}: {said}" for name, said in results.engines.usable.items())
    skipped = "; ".join(f"{name}: {why}" for name, why in results.engines.skipped.items())
    return [
        *host_lines(),
        f"- packages: {package_versions()}",
        f"- engines usable here: {usable or 'none'}",
        f"- engines skipped (probe failed): {skipped or 'none'}",
        f"- date: {results.date}; 1-minute load average {results.load_before:.2f} before the run, "
        f"{results.load_after:.2f} after; the whole run took {results.wall_s:.0f} s",
        f"- input: {results.distinct_windows} distinct real 3 s windows at 48 kHz, held as 16-bit "
        f"PCM ({results.windows_mb:.0f} MB in each process, part of its peak RSS)",
    ]


def model_name(row: Row) -> str:
    name = row.timing.model_file if row.timing else Path(row.plan.model).name
    short = name[len(MODEL_PREFIX) :] if name.startswith(MODEL_PREFIX) else name
    return f"`{short}` (original)" if row.plan.reference else f"`{short}`"


def table_row(row: Row, best: Optional[Row]) -> str:
    threads = str(row.plan.threads) if row.plan.threads else "–"
    engine = f"{row.plan.engine} (worker)" if row.plan.worker else row.plan.engine
    head = f"| {engine} | {model_name(row)} | {threads} | {row.plan.batch} |"
    timing = row.timing
    if timing is None:
        return f"{head} – | – | – | – | – | – | {row.note} |"
    mark = "**" if row is best else ""
    runs = ", ".join(f"{s / timing.windows * 1000:.1f}" for s in timing.run_s)
    return (
        f"{head} {timing.load_s:.2f} | {timing.first_call_s:.2f} | "
        f"{mark}{row.windows_per_s:,.1f}{mark} | {row.ms_per_window:.1f} | {row.rtf:,.0f}x | "
        f"{row.peak_rss_mb:,.0f} MB | {timing.windows} × {len(timing.run_s)}; ms/window "
        f"{runs} |"
    )


def table(results: Results) -> List[str]:
    best = results.best()
    return [
        "| engine | model | threads | batch | load s | first call s | windows/s | "
        "ms / window | RTF | peak RSS | windows × repeats; every repeat |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *(table_row(row, best) for row in results.rows),
    ]


def describe(row: Row) -> str:
    return (
        f"{row.plan.engine} at {row.plan.threads or 'default'} threads, batch {row.plan.batch} "
        f"({row.windows_per_s:,.1f} windows/s, {row.ms_per_window:.1f} ms per window, "
        f"{row.rtf:,.0f}x real time, peak RSS {row.peak_rss_mb:,.0f} MB)"
    )


def short(row: Row) -> str:
    reference = "original model, " if row.plan.reference else ""
    worker = " in a worker" if row.plan.worker else ""
    return f"{reference}{row.plan.engine}{worker} {row.plan.threads or '–'}/{row.plan.batch}"


def first_call_s(row: Row) -> float:
    return row.timing.first_call_s if row.timing else 0.0


def extremes(rows: Sequence[Row]) -> str:
    """The range of the first-call and peak-RSS columns (engine threads/batch in brackets)."""
    first = sorted(rows, key=first_call_s)
    rss = sorted(rows, key=lambda row: row.peak_rss_mb)
    return (
        f"The first call after load takes {first_call_s(first[0]):.2f} s ({short(first[0])}) "
        f"to {first_call_s(first[-1]):.2f} s ({short(first[-1])}); peak RSS runs from "
        f"{rss[0].peak_rss_mb:,.0f} MB ({short(rss[0])}) to {rss[-1].peak_rss_mb:,.0f} MB "
        f"({short(rss[-1])})."
    )


def reading(results: Results) -> str:
    best = results.best()
    if best is None:
        return "No configuration could be measured."
    ok = best.windows_per_s >= TARGET_WINDOWS_PER_S
    parts = [
        f"The best engine here is {describe(best)}: the target of ≥ "
        f"{TARGET_WINDOWS_PER_S:.0f} windows/s (≤ {1000 / TARGET_WINDOWS_PER_S:.0f} ms per "
        f"3 s window) is {verdict(ok)}"
        + ("." if ok else f", {1000 / TARGET_WINDOWS_PER_S / best.ms_per_window:.0%} of it.")
    ]
    for engine in results.engines.usable:
        top = results.best_of(engine)
        if top is not None and top is not best:
            parts.append(f"The best {engine} row is {describe(top)}.")
    parts.append(extremes(results.measured()))
    reference, rewritten = results.best_of("tflite", True), results.best_of("tflite")
    if reference is not None and rewritten is not None:
        parts.append(
            f"The original BirdNET model on TFLite does {reference.windows_per_s:,.1f} windows/s "
            f"at best ({reference.ms_per_window:.1f} ms): the best engine is "
            f"{best.windows_per_s / reference.windows_per_s:.1f}x faster."
        )
    elif results.reference_note:
        parts.append(f"The original model was not measured: {results.reference_note}.")
    parts.extend(worker_costs(results))
    return " ".join(parts)


def worker_costs(results: Results) -> List[str]:
    """What the worker-process boundary adds per window, against the same engine in-process."""
    costs = []
    for row in results.measured():
        twin = results.twin(row) if row.plan.worker else None
        if twin is not None:
            extra = row.ms_per_window - twin.ms_per_window
            costs.append(
                f"{short(twin)} {extra:+.1f} ms ({row.ms_per_window:.1f} vs "
                f"{twin.ms_per_window:.1f})"
            )
    if not costs:
        return []
    return [
        "In a worker process (`engine.python`, the boundary a Jetson's TensorRT engine runs "
        f"behind) each window costs: {'; '.join(costs)}."
    ]


def engines_section(results: Results) -> str:
    return section_text(
        ENGINES_START,
        ENGINES_END,
        "## Engine results",
        machine(results),
        table(results),
        reading(results),
    )


ENGINES_HEAD = """
## Engines: windows/s per engine, threads and batch size

```sh
python bench/engines.py                    # about 2.5 minutes on 2 cores
python bench/engines.py --windows 64 --repeats 1   # a quick look
```

Every engine type whose `probe()` succeeds here (a failing probe is listed, not measured) runs
BirdNET V2.4 (`engine.model: birdnet`, resolved by format: the rewritten TFLite model and its
ONNX conversion) at threads 1 and 2 × batch 1, 2 and 8 (and 64 for ONNX Runtime when at least
4 GiB are available), and for reference the original, un-rewritten BirdNET TFLite model (the
manifest's `classifier_reference`) at 2 threads, batch 1 and 2, and TFLite and ONNX Runtime
again in a worker process (`engine.python`: the process boundary a Jetson's TensorRT engine runs
behind) at 2 threads, batch 1 and 8. Each configuration runs in its
own process, one after the other: `create_engine(Config(model, threads, batch_size))` (the
"load s" column, sidecar hash check included), one `predict` timed on its own ("first call s":
the first run after load or resize, kept out of the rest), one more warm-up call, then `--repeats`
passes (default 3) over at least `--windows` (default 128, a whole number of batches) real 3 s
windows cut from the shared soundscapes (`$BIRDD_TEST_AUDIO/soundscapes/*.wav` and `*.mp3`,
resampled to 48 kHz with soxr; consecutive whole windows of each file, cycled when more are
needed). Only `engine.predict` is timed; the median pass counts and every pass is listed.
ms / window = that pass's time / windows; windows/s = 1000 / ms per window; RTF (real-time
factor) = 3 s / time per window, i.e. how many times faster than real time; peak RSS is the
process's own (`wait4`): Python, numpy, the runtime, the model and the input windows (for a
worker row, the larger of the benchmark process and its worker).

Target (issue 5): ≥ 100 windows/s (≤ 10 ms per 3 s window) with the best engine on the 2-core
CPU. The results below are rewritten by each run; the machine is shared, so check the load
average line before trusting a few percent.

"""


# --------------------------------------------------------------------------- main


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the engines (see the module).")
    parser.add_argument("--windows", type=int, default=128, help="windows per pass, at least")
    parser.add_argument("--repeats", type=int, default=3, help="passes; the median counts")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument(
        "--model", nargs="+", type=Path, default=[], metavar="FILE",
        help="also time these model files: .onnx on ONNX Runtime, .tflite on TFLite",
    )  # fmt: skip
    parser.add_argument(
        "--models-only", action="store_true",
        help="only the --model files and BirdNET V2.4 at their engines, threads and batches",
    )  # fmt: skip
    parser.add_argument("--child", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.windows < 1 or args.repeats < 1:
        parser.error("--windows and --repeats must be at least 1")
    if args.models_only and not args.model:
        parser.error("--models-only times the --model files: name at least one")
    return args


def measure(args: argparse.Namespace) -> Results:
    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    step("cutting real windows from the soundscapes")
    windows = real_windows()
    engines = probe_engines()
    for name, why in engines.skipped.items():
        step(f"skipping {name}: {why}")
    if args.models_only:
        plans, reference_note = birdnet_beside(args.model, args.windows, args.repeats), ""
    else:
        references, reference_note = reference_plans(engines, args.windows, args.repeats)
        plans = sweep(engines, args.windows, args.repeats) + references
        plans += worker_plans(engines, args.windows, args.repeats)
    plans += model_plans(args.model, args.windows, args.repeats)
    rows = run_all(plans, windows)
    return Results(
        rows,
        engines,
        reference_note,
        len(windows),
        windows.nbytes / 1024**2,
        load_before,
        os.getloadavg()[0],
        time.perf_counter() - began,
        date,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(*args.child)
    results = measure(args)
    print("\n".join(table(results)))
    print()
    print(reading(results))
    if not args.no_docs and not args.models_only:
        replace_section(ENGINES_START, ENGINES_END, engines_section(results), ENGINES_HEAD)
    return 0


if __name__ == "__main__":
    sys.exit(main())
