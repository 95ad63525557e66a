"""The head run's report folder: report.md, metrics.json and the PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List

from birdd.training.datasets.split import classes_missing
from birdd.training.recipes.head_run import HeadRun
from birdd.training.report.plots import ap_bars, pr_curves, short, training_curves


def _number(value: float) -> str:
    return (
        "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
    )


def _summary_table(run: HeadRun) -> List[str]:
    lines = [
        "| model | macro AP | macro ROC-AUC | macro F1 @ 0.5 | macro F1 @ best | classes |",
        "|---|---|---|---|---|---|",
    ]
    for evaluation in run.evaluations:
        m = evaluation.macro
        lines.append(
            f"| {evaluation.name} | {_number(m['ap'])} | {_number(m['roc_auc'])} | "
            f"{_number(m['f1_at_0.5'])} | {_number(m['f1_at_best'])} | {int(m['classes'])} |"
        )
    return lines


def _class_table(run: HeadRun) -> List[str]:
    head, birdnet = run.evaluations[0], run.evaluations[1]
    lines = [
        "| species | test recs | AP head | AP BirdNET | ROC-AUC head | P/R/F1 @ 0.5 head | "
        "best thr | P/R/F1 @ best | suggested thr |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mine, theirs in zip(head.classes, birdnet.classes):
        half, best = mine.at_half, mine.best
        lines.append(
            f"| {short(mine.label)} | {mine.positives} | {_number(mine.ap)} | "
            f"{_number(theirs.ap)} | {_number(mine.roc_auc)} | "
            f"{half.precision:.2f}/{half.recall:.2f}/{half.f1:.2f} | {best.threshold:.2f} | "
            f"{best.precision:.2f}/{best.recall:.2f}/{best.f1:.2f} | "
            f"{run.thresholds[mine.label]:.2f} |"
        )
    return lines


def _data_lines(run: HeadRun) -> List[str]:
    prepared = run.prepared
    lines = ["| split | recordings | negatives | recordists/groups |", "|---|---|---|---|"]
    for name, recordings in prepared.split.items():
        negatives = sum(rec.is_negative for rec in recordings)
        groups = len({rec.group for rec in recordings})
        lines.append(f"| {name} | {len(recordings)} | {negatives} | {groups} |")
    lines.append("")
    for name, missing in classes_missing(prepared.split, run.labels).items():
        if missing:
            lines.append(f"- no {name} recording of: {', '.join(short(m) for m in missing)}")
    for path, why in prepared.extraction.skipped:
        lines.append(f"- skipped (unreadable): `{path}`: {why}")
    return lines


def _credits(run: HeadRun) -> List[str]:
    credits = sorted({rec.credit for rec in run.prepared.dataset.recordings if rec.credit})
    lines = ["Recordings used (recordist and catalogue number, as their licences require):", ""]
    lines += [f"- {credit}" for credit in credits] or ["- (the data named no recordists)"]
    return lines


def _parity_lines(run: HeadRun) -> List[str]:
    lines = [
        "| export | engine | windows | max abs Δ vs PyTorch | within 1e-3 |",
        "|---|---|---|---|---|",
    ]
    for parity in run.parity:
        lines.append(
            f"| `{parity.export}` | {parity.engine} | {parity.windows} | "
            f"{parity.max_abs_diff:.2e} | {'yes' if parity.ok else 'NO'} |"
        )
    return lines


def metrics_json(run: HeadRun) -> Dict[str, object]:
    return {
        "labels": run.labels,
        "evaluations": {
            e.name: {"macro": e.macro, "classes": [m.to_json() for m in e.classes]}
            for e in run.evaluations
        },
        "thresholds": run.thresholds,
        "negatives_with_a_positive": run.negatives,
        "parity": [p.to_json() for p in run.parity],
        "history": run.history.to_json(),
        "seconds": run.seconds,
        "skipped": run.prepared.extraction.skipped,
        "data_sha256": run.prepared.data_sha256,
    }


def write_report(run: HeadRun, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    head, birdnet = run.evaluations[0], run.evaluations[1]
    training_curves(run.history, folder / "training_curves.png")
    probabilities = {e.name: e.probabilities for e in run.evaluations[:2]}
    pr_curves(run.labels, run.truth, probabilities, folder / "pr_curves.png")
    ap_bars({e.name: e.classes for e in run.evaluations[:2]}, folder / "per_class_ap.png")
    (folder / "metrics.json").write_text(json.dumps(metrics_json(run), indent=1) + "\n")
    negatives = sum(rec.is_negative for rec in run.prepared.split["test"])
    seconds = ", ".join(f"{k} {v:.0f} s" for k, v in run.seconds.items())
    lines = [
        "# birdd train head: report",
        "",
        f"{len(run.labels)} classes; test macro AP **{_number(head.macro['ap'])}** (head) vs "
        f"**{_number(birdnet.macro['ap'])}** (BirdNET on the same recordings and species). "
        f"Time: {seconds}.",
        "",
        "Scores are per test recording (the highest over its 3 s windows); background species "
        "of a recording are ignored for it; classes without a test recording are left out of "
        'the macro averages. "best" is the best-F1 threshold on the test split itself (an '
        "upper bound); the suggested thresholds were chosen on the validation split and are "
        "written to the sidecars.",
        "",
        "## Results on the test split",
        "",
        *_summary_table(run),
        "",
        "The rows after BirdNET are the same head trained without one of its parts: without "
        "teacher filtering (every window of a labelled recording a positive; the filter keeps "
        f"windows where BirdNET gives the labelled species ≥ {run.options.teacher_min}, plus "
        "each recording's best window), without the BirdNET prior (the head adds a learned "
        "multiple of BirdNET's own logit for each species BirdNET knows), and without the "
        "fallback (a species keeps the head only where it ranks the validation recordings "
        "better than BirdNET, else it scores BirdNET's logit).",
        "",
        f"Negatives in the test split: {negatives}; with a positive: head at its suggested "
        f"thresholds {run.negatives['head']}, BirdNET at 0.5 {run.negatives['BirdNET']}.",
        "",
        "![per-class AP](per_class_ap.png)",
        "",
        *_class_table(run),
        "",
        "![PR curves](pr_curves.png)",
        "",
        "## Training",
        "",
        f"Best epoch {run.history.best_epoch + 1} of {len(run.history.train_loss)} "
        f"(validation score {run.history.best_score:.3f}: macro AP per recording less "
        "0.05 × the window loss); "
        f"options: `{run.options}`.",
        "",
        "![training curves](training_curves.png)",
        "",
        "## Data",
        "",
        *_data_lines(run),
        "",
        "## Exports, re-scored through the birdd engines",
        "",
        *_parity_lines(run),
        "",
        *[f"- `{path.name}`" for path in run.files],
        "",
        "## Credits",
        "",
        *_credits(run),
        "",
    ]
    report = folder / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report
