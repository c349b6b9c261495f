"""Stage 5: report.md, and report.html made from it with its images inside.

One source: templates/report.md.j2, rendered by Jinja2 to markdown, which
python-markdown turns into the HTML page.
"""

from __future__ import annotations

import base64
import shutil
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks import plots
from tasks.engine.refs import DatasetRef, MetricsRef, ModelRef, PreparedRef
from tasks.engine.versions import library_versions
from tasks.params import TrainParams

if TYPE_CHECKING:
    import pandas as pd

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
TEMPLATES = Path(__file__).with_name("templates")
# The image files of a report, by their name in the template.
IMAGES = {"samples": PreparedRef.SAMPLES, "curves": "curves.png", "per_class": "per_class.png",
          "confusion": "confusion.png", "misclassified": "misclassified.png"}
MISCLASSIFIED_SHOWN = 20


def table(frame: "pd.DataFrame | list[dict[str, Any]]") -> str:
    """A pipe table of a frame or of rows (dicts, one key per column); integers stay integers, row numbers are left out.

    The call pandas' to_markdown makes, so rows need no pandas: a run's own report is made of them.
    """
    from tabulate import tabulate

    if isinstance(frame, list):
        return tabulate(frame, headers="keys", tablefmt="pipe", floatfmt=".4f")
    import pandas as pd

    meaningful_index = not isinstance(frame.index, pd.RangeIndex) or frame.index.name is not None
    return tabulate(frame.astype(object), headers="keys", tablefmt="pipe", floatfmt=".4f", showindex=meaningful_index)


@lru_cache(maxsize=None)
def _templates() -> Any:
    import jinja2
    from markupsafe import Markup, escape

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             autoescape=True, keep_trailing_newline=True, trim_blocks=True)
    env.filters["table"] = lambda frame: Markup(escape(table(frame)))
    return env


def render(template: str, **context: Any) -> str:
    """A template of templates/, rendered; every value HTML-escaped, as the page is made from it."""
    return _templates().get_template(template).render(**context)


def to_html(markdown_text: str, images: Path) -> str:
    """The page of `markdown_text`, titled by its first heading, each image read from `images` and put inside it."""
    import markdown
    from markdown.extensions import Extension
    from markdown.treeprocessors import Treeprocessor
    from markupsafe import Markup

    class InlineImages(Treeprocessor):
        def run(self, root):
            for image in root.iter("img"):
                path = images / image.get("src", "")
                if path.parent == images and path.is_file():
                    image.set("src", "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode())

    class Extend(Extension):
        def extendMarkdown(self, md):
            md.treeprocessors.register(InlineImages(md), "inline_images", 0)

    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code", Extend()])
    return render("page.html.j2", title=markdown_text.splitlines()[0].lstrip("# "), body=Markup(body))


def build_report(out: Path, raw: DatasetRef, data: PreparedRef, model: ModelRef, metrics: MetricsRef,
                 params: TrainParams) -> dict[str, Any]:
    """Render the run's report as Markdown and as self-contained HTML."""
    import pandas as pd

    shutil.copy(data.folder / PreparedRef.SAMPLES, out / IMAGES["samples"])
    history = model.history()
    plots.training_curves(history, out / IMAGES["curves"])
    tables = metrics.tables()
    plots.confusion_heatmap(tables["confusion"], out / IMAGES["confusion"])
    plots.per_class_bars(tables["per_class"], out / IMAGES["per_class"])
    images = dict(IMAGES)
    worst = tables["misclassified"].head(MISCLASSIFIED_SHOWN)
    if len(worst):
        x_test, _ = data.split("test", mmap=True)
        captions = [f"{t} -> {p}" for t, p in zip(worst["true"], worst["predicted"])]
        plots.image_grid(np.asarray(x_test[worst["index"].to_numpy()]), captions, out / IMAGES["misclassified"])
    else:
        images["misclassified"] = None
    text = render(
        "report.md.j2", raw=raw, data=data, model=model, metrics=metrics, images=images, tables=tables,
        history=history, summary=model.summary(), settings=pd.DataFrame([params.model_dump()]),
        versions=pd.DataFrame([library_versions()]),
        files=pd.DataFrame(sorted(raw.files_sha256.items()), columns=["file", "sha256"]),
    )
    (out / REPORT_MD).write_text(text)
    (out / REPORT_HTML).write_text(to_html(text, out))
    return {"markdown": REPORT_MD, "html": REPORT_HTML}
