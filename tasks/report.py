"""Stage 5: report.md from templates/report.md.j2 (Jinja2), and report.html made from it with its images inside.

Values come from the store and from users (a mirror's folder name, the run log): every one is shown as text,
never as markdown or HTML, and the page keeps only the tags and links a report makes.
"""

from __future__ import annotations

import base64
import json
import numbers
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from markupsafe import Markup, escape

from tasks import plots
from tasks.refs import DatasetRef, MetricsRef, ModelRef, PreparedRef
from engine.layout import MANIFEST
from engine.text import shown

if TYPE_CHECKING:
    from tasks.params import TrainParams
    import pandas as pd

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
TEMPLATES = Path(__file__).with_name("templates")
# The image files of a report, by their name in the template.
IMAGES = {"samples": "samples.png", "curves": "curves.png", "per_class": "per_class.png",
          "confusion": "confusion.png", "misclassified": "misclassified.png"}
MISCLASSIFIED_SHOWN = SAMPLES = 20
# Markdown's characters that python-markdown (and CommonMark) take back from a backslash: a value
# holding them makes no link, image, emphasis, code span, heading or table cell. HTML's own
# (`<`, `>`, `&`) become entities through the templates' autoescape instead.
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]#|])")
# What report.html keeps of the HTML python-markdown makes: the tags a report uses; links to the web,
# to mail or relative ones; images only as the data URIs the report inlines.
_TAGS = {"h1", "h2", "h3", "h4", "h5", "h6", "p", "br", "hr", "em", "strong", "code", "pre", "blockquote",
         "ul", "ol", "li", "a", "img", "table", "thead", "tbody", "tr", "th", "td"}
_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title"}, "th": {"style"}, "td": {"style"}}


def markdown_escape(value: Any) -> str:
    """A value as markdown text that shows it as it is, on one line: no markup, no new line, row or heading."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", shown(" ".join(str(value).splitlines())))


def as_text(value: Any) -> str:
    """A value as the reports' markdown shows it, for markdown made outside the templates (the UI's headline)."""
    return str(escape(markdown_escape(value)))


def _cell(value: Any) -> Any:
    """A table cell: numbers as they are, for tabulate to format; anything else as escaped text."""
    return value if value is None or isinstance(value, numbers.Number) else markdown_escape(value)


def seconds(value: Any) -> Any:
    """A time as the reports show it: `23.55 s`; anything but a number as it is."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value):
        return f"{value:.2f} s"
    return value


def _column(key: Any, value: Any) -> Any:
    """A table cell of the column `key`: times (a column named `seconds`) with their unit, at two decimals."""
    return _cell(seconds(value) if key == "seconds" else value)


def table(frame: "pd.DataFrame | list[dict[str, Any]]") -> str:
    """A pipe table of a frame or of rows (dicts, which need no pandas: a run's own report is made of them), as
    pandas' to_markdown makes it; text cells escaped, so that a value cannot open a cell, a row or a link.
    Numbers show four decimals, but in a column named `seconds`: `23.55 s`."""
    from tabulate import tabulate

    if isinstance(frame, list):
        rows = [{_cell(key): _column(key, value) for key, value in row.items()} for row in frame]
        return tabulate(rows, headers="keys", tablefmt="pipe", floatfmt=".4f")
    import pandas as pd

    meaningful_index = not isinstance(frame.index, pd.RangeIndex) or frame.index.name is not None
    cells = frame.apply(lambda column: column.map(lambda value: _column(column.name, value))).astype(object).rename(
        columns=_cell, index=_cell)
    return tabulate(cells, headers="keys", tablefmt="pipe", floatfmt=".4f", showindex=meaningful_index)


def code_block(text: str) -> str:
    """`text` as a fenced code block that nothing in it can close: its fence outgrows every run of backticks in it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return Markup(f"{fence}\n{text.strip()}\n{fence}")


@lru_cache(maxsize=None)
def _templates() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined, autoescape=True,
        keep_trailing_newline=True, trim_blocks=True,
        # Every value the templates print is markdown-escaped, then HTML-escaped; what a filter made is Markup.
        finalize=lambda value: value if isinstance(value, Markup) else markdown_escape(value))
    env.filters["table"] = lambda frame: Markup(escape(table(frame)))
    env.filters["code"] = code_block
    return env


def render(template: str, **context: Any) -> str:
    """A template of templates/, rendered; every value shown as text (escaped for markdown and for HTML)."""
    return _templates().get_template(template).render(**context)


def to_html(markdown_text: str, images: Path) -> str:
    """The page of `markdown_text`, titled by its first heading, each image read from `images` and put inside it."""
    import markdown
    import nh3
    from markdown.extensions import Extension
    from markdown.treeprocessors import Treeprocessor

    class InlineImages(Treeprocessor):
        def run(self, root):
            for image in root.iter("img"):
                path = images / image.get("src", "")
                if path.parent == images and path.is_file():
                    image.set("src", "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode())

    class Extend(Extension):
        def extendMarkdown(self, md):
            md.treeprocessors.register(InlineImages(md), "inline_images", 0)

    body = nh3.clean(markdown.markdown(markdown_text, extensions=["tables", "fenced_code", Extend()]),
                     tags=_TAGS, attributes=_ATTRIBUTES, url_schemes={"http", "https", "mailto", "data"},
                     attribute_filter=_data_uris_for_images_only, filter_style_properties={"text-align"})
    heading = re.search(r"<h1>(.*?)</h1>", body, re.DOTALL)
    title = Markup(heading.group(1) if heading else "").striptags()
    return render("page.html.j2", title=escape(title), body=Markup(body))


def _data_uris_for_images_only(tag: str, attribute: str, value: str) -> "str | None":
    """nh3's last word on an attribute whose scheme it allowed: a data URI is an image's source, nothing else."""
    url = value.strip().lower()
    if attribute == "src":  # the report inlines its PNGs
        return value if url.startswith("data:image/png;") else None
    return None if url.startswith("data:") else value


def versions(*entries: Any) -> dict[str, str]:
    """The versions of the libraries that computed `entries`, as their manifests record them."""
    found: dict[str, str] = {}
    for entry in entries:
        found.update(json.loads((entry.folder / MANIFEST).read_text()).get("versions", {}))
    return dict(sorted(found.items()))


def build_report(out: Path, raw: DatasetRef, data: PreparedRef, model: ModelRef, metrics: MetricsRef,
                 params: TrainParams) -> dict[str, Any]:
    """Render the run's report as Markdown and as self-contained HTML."""
    import pandas as pd

    # The tutorial's first look at the data: 20 training images and their labels.
    x_train, y_train = data.split("train", mmap=True)
    plots.image_grid(np.asarray(x_train[:SAMPLES]), list(map(str, y_train[:SAMPLES])), out / IMAGES["samples"])
    history = model.history()
    plots.training_curves(history, out / IMAGES["curves"])
    tables = metrics.tables()
    plots.confusion_heatmap(tables["confusion"], out / IMAGES["confusion"])
    plots.per_class_bars(tables["per_class"], out / IMAGES["per_class"])
    # The images' own file names, linked as they are.
    images = {name: Markup(file) for name, file in IMAGES.items()}
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
        versions=pd.DataFrame([versions(raw, data, model, metrics)]),
        files=pd.DataFrame(sorted(raw.files_sha256.items()), columns=["file", "sha256"]),
    )
    (out / REPORT_MD).write_text(text)
    (out / REPORT_HTML).write_text(to_html(text, out))
    return {"markdown": REPORT_MD, "html": REPORT_HTML}
