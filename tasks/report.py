"""Stage 5: report.md and a self-contained report.html, published to Prefect."""

from __future__ import annotations

import base64
import html
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import evaluate, plots, preprocess, runlog, train
from tasks.caching import StageCache, library_versions, stage_task
from tasks.config import TrainParams
from tasks.gate import GateResult
from tasks.refs import DatasetRef, MetricsRef, ModelRef, PreparedRef, ReportRef
from tasks.store import ArtifactStore, write_atomically

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
CURVES_PNG = "curves.png"
CONFUSION_PNG = "confusion.png"
PER_CLASS_PNG = "per_class.png"
MISCLASSIFIED_PNG = "misclassified.png"
MISCLASSIFIED_SHOWN = 20
_HTML_END = "</body></html>"
# Per flow run, beside the stage entries: the report with what only that run knows.
RUNS_DIR = "runs"
# Set by `make serve` for its worker: the file server's address, and the store it serves.
REPORTS_URL_ENV = "MNIST_PIPELINE_REPORTS_URL"
REPORTS_ROOT_ENV = "MNIST_PIPELINE_REPORTS_ROOT"
# How many earlier runs of the same dataset the published report compares against.
PREVIOUS_RUNS = 5

CACHE = StageCache(stage="report", module=__name__)


@dataclass
class Image:
    file: str
    alt: str


@dataclass
class Code:
    text: str


Block = Union[str, Image, Code, pd.DataFrame]


def _meaningful_index(table: pd.DataFrame) -> bool:
    # Row numbers 0, 1, 2 ... say nothing; class labels and epochs do.
    return not isinstance(table.index, pd.RangeIndex) or table.index.name is not None


def markdown_body(sections: list[tuple[str, list[Block]]]) -> str:
    out = []
    for heading, blocks in sections:
        out += [f"## {heading}", ""]
        for block in blocks:
            if isinstance(block, Image):
                out.append(f"![{block.alt}]({block.file})")
            elif isinstance(block, Code):
                out += ["```", block.text.rstrip(), "```"]
            elif isinstance(block, pd.DataFrame):
                # As objects, so integer columns beside float ones print as integers.
                out.append(block.astype(object).to_markdown(floatfmt=".4f", index=_meaningful_index(block)))
            else:
                out.append(block)
            out.append("")
    return "\n".join(out)


def html_body(sections: list[tuple[str, list[Block]]], folder: Path) -> str:
    out = []
    for heading, blocks in sections:
        out.append(f"<h2>{html.escape(heading)}</h2>")
        for block in blocks:
            if isinstance(block, Image):
                data = base64.b64encode((folder / block.file).read_bytes()).decode()
                out.append(f"<img alt='{html.escape(block.alt)}' src='data:image/png;base64,{data}'>")
            elif isinstance(block, Code):
                out.append(f"<pre>{html.escape(block.text)}</pre>")
            elif isinstance(block, pd.DataFrame):
                out.append(block.to_html(float_format="{:.4f}".format, border=0, index=_meaningful_index(block)))
            else:
                out.append(f"<p>{html.escape(block)}</p>")
    return "\n".join(out)


def render_markdown(title: str, sections: list[tuple[str, list[Block]]]) -> str:
    return f"# {title}\n\n{markdown_body(sections)}"


def render_html(title: str, sections: list[tuple[str, list[Block]]], folder: Path) -> str:
    return "\n".join([
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}",
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}",
        "img{max-width:100%}pre{background:#f4f4f4;padding:1em;overflow-x:auto}",
        f"</style></head><body><h1>{html.escape(title)}</h1>",
        html_body(sections, folder),
        _HTML_END,
    ])


def _sections(raw: DatasetRef, data: PreparedRef, model: ModelRef, metrics: MetricsRef,
              params: TrainParams, history: pd.DataFrame, tables: dict[str, pd.DataFrame],
              summary: str) -> list[tuple[str, list[Block]]]:
    files = pd.DataFrame(sorted(raw.files_sha256.items()), columns=["file", "sha256"])
    settings = pd.DataFrame([params.model_dump()])
    return [
        ("Dataset", [
            f"{raw.dataset} from {raw.source}: {data.train_count} training images "
            f"(of {raw.train_count}) and {data.test_count} test images.",
            files,
            f"SHA-256 of the decoded arrays: {raw.arrays_sha256}",
            *[f"Warning: {warning}." for warning in raw.warnings],
            Image(preprocess.SAMPLES_PNG, "the first 20 training images and their labels"),
        ]),
        ("Model", [Code(summary)]),
        ("Training", [
            settings,
            pd.DataFrame([library_versions()]),
            f"{model.epochs_run} epochs on {model.device}, "
            f"{sum(model.epoch_seconds):.1f} s in all.",
            Image(CURVES_PNG, "loss and accuracy per epoch"),
            history,
        ]),
        ("Metrics", [
            f"Test accuracy {metrics.test_accuracy:.4f}, test loss {metrics.test_loss:.4f}.",
            Image(PER_CLASS_PNG, "precision, recall and F1 per class"),
            tables["per_class"],
        ]),
        ("Confusion matrix", [Image(CONFUSION_PNG, "confusion matrix"), tables["confusion"]]),
        ("Predictions", [
            "Logits and predicted class of the first test images.",
            tables["first_predictions"],
        ]),
        ("Misclassified examples", [
            f"{len(tables['misclassified'])} test images are misclassified; the most "
            "confident mistakes first (true -> predicted).",
        ] + ([Image(MISCLASSIFIED_PNG, "misclassified test images")] if len(tables["misclassified"]) else [])),
    ]


def write_report(out: Path, entries: dict[str, Path], refs: dict[str, Any], params: TrainParams) -> dict[str, Any]:
    shutil.copy(entries["preprocess"] / preprocess.SAMPLES_PNG, out / preprocess.SAMPLES_PNG)
    history = train.load_history(entries["train"])
    plots.training_curves(history, out / CURVES_PNG)
    tables = evaluate.load_tables(entries["evaluate"])
    plots.confusion_heatmap(tables["confusion"], out / CONFUSION_PNG)
    plots.per_class_bars(tables["per_class"], out / PER_CLASS_PNG)

    worst = tables["misclassified"].head(MISCLASSIFIED_SHOWN)
    if len(worst):
        x_test, _ = preprocess.load_split(entries["preprocess"], "test", mmap=True)
        images = np.asarray(x_test[worst["index"].to_numpy()])
        captions = [f"{t} -> {p}" for t, p in zip(worst["true"], worst["predicted"])]
        plots.image_grid(images, captions, out / MISCLASSIFIED_PNG)

    summary = (entries["train"] / train.SUMMARY).read_text()
    sections = _sections(params=params, history=history, tables=tables, summary=summary, **refs)
    title = f"{refs['raw'].dataset} CNN: test accuracy {refs['metrics'].test_accuracy:.4f}"
    (out / REPORT_MD).write_text(render_markdown(title, sections))
    (out / REPORT_HTML).write_text(render_html(title, sections, out))
    return {"markdown": REPORT_MD, "html": REPORT_HTML}


@stage_task(CACHE)
def build_report(artifacts_dir: str, raw: DatasetRef, data: PreparedRef, model: ModelRef,
                 metrics: MetricsRef, params: TrainParams) -> ReportRef:
    """Render the run's report as Markdown and as self-contained HTML."""
    store = ArtifactStore(artifacts_dir)
    refs = {"raw": raw, "data": data, "model": model, "metrics": metrics}
    entries = {ref.stage: store.path(ref) for ref in refs.values()}
    return CACHE.produce(
        lambda out: write_report(out, entries, refs, params), artifacts_dir,
        params=params, **refs,
    )


def run_sections(artifacts_dir: str, dataset: str, metrics: MetricsRef, stages: dict[str, dict],
                 gate: GateResult) -> list[tuple[str, list[Block]]]:
    """What only this run knows: the gate's verdict, each stage's time and cache state, earlier runs."""
    verdict = "promoted to champion" if gate.passed else "not promoted"
    timing = pd.DataFrame(stages).T[["state", "seconds", "attempts"]]
    timing.index.name = "stage"
    earlier = runlog.read(artifacts_dir)
    earlier = earlier[earlier["dataset"] == dataset].tail(PREVIOUS_RUNS)
    if earlier.empty:
        comparison: list[Block] = [f"No earlier {dataset} run is logged in this store."]
    else:
        columns = ["finished", "epochs", "batch_size", "learning_rate", "lr_schedule", "train_limit", "test_accuracy",
                   "gate_passed"]
        comparison = [f"This run: test accuracy {metrics.test_accuracy:.4f}; the best of the "
                      f"{len(earlier)} runs before it: {earlier['test_accuracy'].max():.4f}.",
                      earlier[columns].reset_index(drop=True)]
    return [
        ("Quality gate", [f"The model was {verdict}: {gate.reason}."]),
        ("This run", ["Each stage's time, and whether it ran or came from the store.", timing]),
        ("Earlier runs", comparison),
    ]


def write_run_report(artifacts_dir: str, folder: Path, report: ReportRef, metrics: MetricsRef, dataset: str,
                     gate: GateResult, stages: dict[str, dict]) -> None:
    """This run's report in `folder` (`runs/<flow run id>`): the stage's, plus what only the run knows."""
    entry = ArtifactStore(artifacts_dir).path(report)
    extra = run_sections(artifacts_dir, dataset, metrics, stages, gate)
    folder.mkdir(parents=True, exist_ok=True)
    page = (entry / REPORT_HTML).read_text().replace(_HTML_END, f"{html_body(extra, entry)}\n{_HTML_END}")
    write_atomically(folder / REPORT_HTML, page)
    # Its images stay in the stage's entry, two folders up and across.
    images_at = f"../../{report.stage}/{report.fingerprint}/"
    markdown = (entry / REPORT_MD).read_text().replace("](", f"]({images_at}") + f"\n{markdown_body(extra)}"
    write_atomically(folder / REPORT_MD, markdown)


def report_link(path: Path) -> str:
    """Where a browser opens `path`: from `make serve`'s file server when it serves that store, else a file URI.

    Browsers refuse file URIs from a web page, so only the first opens from the Prefect UI.
    """
    url, root = os.environ.get(REPORTS_URL_ENV), os.environ.get(REPORTS_ROOT_ENV)
    if url and root:
        try:
            return f"{url.rstrip('/')}/{path.resolve().relative_to(Path(root).resolve()).as_posix()}"
        except ValueError:
            pass  # a store the file server does not serve
    return path.resolve().as_uri()


@task(cache_policy=NO_CACHE)
def publish_report(artifacts_dir: str, folder: Path, metrics: MetricsRef, dataset: str, gate: GateResult) -> None:
    """Show this run's report, its per-class scores and a link to its report.html in the Prefect UI."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    key = dataset.replace("_", "-")
    link = report_link(folder / REPORT_HTML)
    headline = (f"**Test accuracy {metrics.test_accuracy:.4f}** (test split), test loss {metrics.test_loss:.4f}; "
                f"{'promoted to champion' if gate.passed else 'not promoted'}: {gate.reason}. "
                f"Full report with images: [report.html]({link})")
    # The UI cannot reach the entry's PNG files: images stay in report.html.
    create_markdown_artifact(
        key=f"{key}-report",
        markdown=headline + "\n\n" + "\n".join(line for line in (folder / REPORT_MD).read_text().splitlines()
                                               if not line.startswith("![")) + "\n",
        description="The pipeline's report (images in report.html).",
    )
    create_link_artifact(
        key=f"{key}-report-html", link=link,
        # Markdown in the description: the Artifacts tab's card links to the report itself.
        link_text="report.html", description=f"Open [report.html]({link}): this run's self-contained report.",
    )
    per_class = evaluate.load_tables(ArtifactStore(artifacts_dir).path(metrics))["per_class"]
    create_table_artifact(
        key=f"{key}-metrics",
        table=per_class.reset_index().round(4).to_dict(orient="records"),
        description=f"Per-class scores; test accuracy {metrics.test_accuracy:.4f}.",
    )
