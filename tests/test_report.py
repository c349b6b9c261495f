import base64
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import matplotlib.image
import pytest

from flows import runner
from tasks import report
from engine.store import ArtifactStore
from tests.stages import run_stages

SECTIONS = ["Dataset", "Model", "Training", "Metrics", "Confusion matrix", "Predictions", "Misclassified examples",
            "Provenance"]


@pytest.fixture(scope="module")
def refs(tmp_path_factory, mirror):
    store = str(tmp_path_factory.mktemp("artifacts"))
    return {"store": store, **run_stages(store, mirror)}


@pytest.fixture(scope="module")
def entry(refs):
    return ArtifactStore(refs["store"]).path(refs["report"])


def test_markdown_has_every_section_and_its_images(entry):
    text = (entry / report.REPORT_MD).read_text()
    for section in SECTIONS:
        assert f"## {section}\n" in text
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert matplotlib.image.imread(entry / image).size > 0


def test_the_sample_grid_is_the_tutorials_two_rows_of_ten(entry):
    grid = matplotlib.image.imread(entry / report.IMAGES["samples"])
    assert grid.shape[1] > 2 * grid.shape[0]


def test_html_is_self_contained_and_its_images_decode(entry):
    html = (entry / report.REPORT_HTML).read_text()
    for section in SECTIONS:
        assert f"<h2>{section}</h2>" in html
    images = re.findall(r"src=[\"']data:image/png;base64,([^\"']+)[\"']", html)
    assert len(images) == 5
    for data in images:
        assert matplotlib.image.imread(io.BytesIO(base64.b64decode(data)), format="png").ndim == 3
    assert "src='http" not in html and 'src="http' not in html


def test_report_shows_the_metrics_and_model(entry, refs):
    text = (entry / report.REPORT_MD).read_text()
    assert "Test accuracy" in text and "121,930" in text and "sha256" in text
    assert "tensorflow-datasets" in text and "keras" in text  # library versions
    # Where the model's TensorBoard curves are, and how to see them.
    assert f"are in `{refs['model'].name}/tensorboard` of the store; `make tensorboard`" in text


def test_the_datasets_warnings_are_in_the_report(entry):
    report = (entry / "report.md").read_text()
    assert "Warning: the checksums of " in report and "are not registered for mnist" in report


def _column(markdown: str, section: str, name: str) -> list[str]:
    """The cells of column `name` in the table of a report section that has one."""
    rows = [line for line in markdown.split(f"## {section}\n")[1].split("\n## ")[0].splitlines()
            if line.startswith("|")]
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    table_start = next(i for i, row in enumerate(cells) if name in row)
    column = cells[table_start].index(name)
    return [row[column] for row in cells[table_start + 2:] if len(row) > column]


def test_integers_print_as_integers(entry):
    markdown = (entry / "report.md").read_text()
    for section, name in (("Metrics", "support"), ("Training", "epoch")):
        values = _column(markdown, section, name)
        assert values and all(value.isdigit() for value in values), (name, values)


def test_a_report_links_through_the_file_server_that_serves_its_store(tmp_path, monkeypatch):
    page = tmp_path / "store" / "runs" / "abc" / "report.html"
    monkeypatch.setenv("MNIST_PIPELINE_REPORTS_URL", "http://127.0.0.1:4201")
    monkeypatch.setenv("MNIST_PIPELINE_REPORTS_ROOT", str(tmp_path / "store"))
    assert runner.report_link(page) == "http://127.0.0.1:4201/runs/abc/report.html"
    elsewhere = tmp_path / "other" / "report.html"
    assert runner.report_link(elsewhere) == elsewhere.resolve().as_uri()


@pytest.mark.parametrize("scores, best", [([0.91, None, 0.95], "0.9500"), ([None], "none recorded")])
def test_the_run_part_names_the_best_earlier_score_of_those_recorded(scores, best):
    from types import SimpleNamespace

    from flows.gate import GateResult

    earlier = [{"finished": f"2026-11-0{i + 1}", "test_accuracy": score, "runs": 1} for i, score in enumerate(scores)]
    refused = GateResult(passed=False, champion_accuracy=None, reason="r", verdict="not promoted")
    text = report.render("run.md.j2", gate=refused, compared=scores,
                         timing=[{"stage": "train", "state": "Cached", "seconds": 0.5, "attempts": 1}],
                         dataset="mnist", metrics=SimpleNamespace(test_accuracy=0.9), earlier=earlier)
    assert f"the best of the {len(scores)} runs before it on the same test data: {best}." in text
    assert "| train   | Cached  | 0.50 s    |          1 |" in text


def test_seconds_show_two_decimals_and_their_unit_in_every_table_of_the_reports():
    import pandas as pd

    rows = [{"stage": "train", "seconds": 23.55}, {"stage": "report", "seconds": 0.0612}]
    assert report.table(rows).splitlines()[2:] == ["| train   | 23.55 s   |", "| report  | 0.06 s    |"]
    # The epochs' table of the stage's report too; other figures keep their four decimals.
    history = report.table(pd.DataFrame({"epoch": [1], "loss": [0.25], "seconds": [8.1234]}))
    assert history.splitlines()[2] == "|       1 | 0.2500 | 8.12 s    |"
    assert "23.5500" not in report.table(rows) and report.seconds(None) is None


HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")


class _Page(HTMLParser):
    """What a browser would make of a page: its elements' attributes, its headings, its tables' cells per row."""

    def __init__(self, html: str):
        super().__init__()
        self.attributes, self.headings, self.tables, self.text = [], [], [], []
        self._heading = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.attributes += [(tag, name, value or "") for name, value in attrs]
        if tag in HEADINGS:
            self._heading = ""
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append(0)
        elif tag in ("td", "th"):
            self.tables[-1][-1] += 1

    def handle_endtag(self, tag):
        if tag in HEADINGS:
            self.headings.append(self._heading.strip())
            self._heading = None

    def handle_data(self, data):
        self.text.append(data)
        if self._heading is not None:
            self._heading += data

    def links(self) -> list[str]:
        return [value for tag, name, value in self.attributes if name in ("href", "src", "action", "formaction")]


WEB_SCHEMES = {"", "http", "https", "mailto"}
LINK = "[click me](javascript:alert(document.domain))"
ROW = "3\n| injected | row |\n# injected heading"


def _assert_nothing_live(page: _Page) -> None:
    for link in page.links():
        scheme = urlsplit(link).scheme.lower()
        assert scheme in WEB_SCHEMES or link.startswith("data:image/png;base64,"), link
    assert not [(tag, name) for tag, name, _ in page.attributes if name.startswith("on") or tag == "script"]
    assert "injected heading" not in page.headings


def test_stored_values_put_no_link_heading_or_row_in_the_run_report(refs, tmp_path, monkeypatch):
    """A mirror named like a markdown link, a model summary that closes its code block and run-log
    values holding links, newlines and `|` are shown as text: no live link, no heading, no row."""
    import shutil

    from flows.stages import build_report, download_dataset
    from flows.gate import GateResult
    from tasks.refs import ModelRef
    from tests.stages import PARAMS
    from tests.synthetic import write_mirror

    store = str(tmp_path / "store")
    shutil.copytree(refs["store"], store)
    mirror = write_mirror(tmp_path / f"{LINK} | {ROW}", train=64, test=20)
    raw = download_dataset.fn(store, "mnist", str(mirror))
    monkeypatch.setattr(ModelRef, "summary", lambda self: f"Model\n```\n<img src=x onerror=alert(1)>\n{LINK}\n")
    stage_report = build_report.fn(store, raw, refs["data"], refs["model"], refs["metrics"], PARAMS)
    (Path(store) / "runs.jsonl").write_text(json.dumps({
        "flow_run_id": "earlier", "dataset": "mnist", "finished": LINK, "epochs": ROW, "learning_rate": "a|b|c",
        "batch_size": "\x1b]0;title\x07\x1b[2Jcleared", "test_accuracy": 0.5}) + "\n")
    folder = Path(store) / "runs" / "this-run"
    runner.write_run_report(store, folder, stage_report, refs["model"], refs["metrics"], PARAMS, "mnist",
                            GateResult(passed=False, champion_accuracy=None, reason=ROW, verdict="not promoted"),
                            {"train": {"state": LINK, "seconds": 1.0, "attempts": 1}})

    markdown = (folder / report.REPORT_MD).read_text()
    assert "\n# injected" not in markdown and "\n| injected" not in markdown
    page = _Page((folder / report.REPORT_HTML).read_text())
    _assert_nothing_live(page)
    assert page.headings == [page.headings[0], "Summary", *SECTIONS, "Quality gate", "This run", "Earlier runs"]
    # Every row has its table's columns, and the earlier runs' table (the last) has the one run logged.
    assert [set(rows) for rows in page.tables] == [{rows[0]} for rows in page.tables]
    assert len(page.tables[-1]) == 2  # its header and the run
    # The values are all there, as text.
    text = " ".join(page.text)
    assert LINK in text and str(mirror.resolve()).replace("\n", " ") in text and "a|b|c" in text
    assert "<img src=x onerror=alert(1)>" in text  # in the model's code block
    # A terminal's escape sequences, as text: `cat report.md` drives no terminal.
    assert "\x1b" not in markdown and "\x07" not in markdown and "\\x1b[2Jcleared" in text


def test_the_html_keeps_only_web_and_relative_links():
    markdown = "\n\n".join([
        "[a](javascript:alert(1)) [b](JaVaScRiPt:alert(2)) [c](data:text/html;base64,PHNjcmlwdD4=)",
        "[d](vbscript:x) <a href=\"javascript:alert(3)\">e</a> <script>alert(4)</script>",
        "<img src=\"x\" onerror=\"alert(5)\"> <form action=\"javascript:alert(6)\"><button>f</button></form>",
        "[web](https://example.org/x) [page](runs/abc/report.html) [mail](mailto:team@example.org)",
    ])
    page = _Page(report.to_html(f"# Report\n\n{markdown}\n", Path("/nonexistent")))
    _assert_nothing_live(page)
    assert page.links() == ["https://example.org/x", "runs/abc/report.html", "mailto:team@example.org"]


def test_the_ui_artifacts_show_stored_values_as_text(refs, tmp_path, monkeypatch):
    """The Prefect UI renders the report's markdown too: its headline and body escaped like report.html's."""
    import markdown as python_markdown
    import prefect.artifacts

    from flows.gate import GateResult

    made = {}
    for kind in ("markdown", "link", "table"):
        monkeypatch.setattr(prefect.artifacts, f"create_{kind}_artifact",
                            lambda kind=kind, **artifact: made.setdefault(kind, artifact))
    monkeypatch.setenv("MNIST_PIPELINE_REPORTS_URL", "http://127.0.0.1:4201")
    monkeypatch.setenv("MNIST_PIPELINE_REPORTS_ROOT", str(tmp_path))
    folder = tmp_path / "runs" / "this-run"
    folder.mkdir(parents=True)
    def refused(reason: str) -> GateResult:
        return GateResult(passed=False, champion_accuracy=None, reason=reason, verdict="not promoted")

    (folder / report.REPORT_MD).write_text(report.render(
        "run.md.j2", gate=refused(LINK), timing=[], compared=[0.5],
        dataset="mnist", metrics=refs["metrics"], earlier=[{"finished": ROW, "test_accuracy": 0.5, "runs": 1}]))
    runner.publish_report.fn(refs["store"], folder, refs["metrics"], "mnist", refused(f"{LINK} {ROW}"))
    page = _Page(python_markdown.markdown(made["markdown"]["markdown"], extensions=["tables"]))
    _assert_nothing_live(page)
    assert page.links() == ["http://127.0.0.1:4201/runs/this-run/report.html"]
    assert LINK in " ".join(page.text)


def test_the_run_report_opens_with_a_summary_and_folds_reruns_of_one_model(refs, tmp_path):
    import shutil

    from flows.gate import GateResult
    from tests.stages import PARAMS

    store = str(tmp_path / "store")
    shutil.copytree(refs["store"], store)
    test_data = refs["metrics"].test_sha256[:12]
    logged = [{"flow_run_id": f"run-{n}", "dataset": "mnist", "finished": f"2026-12-0{n + 1}T00:00:00+00:00",
               "test_data": test_data, "epochs": 3, "test_accuracy": accuracy, "gate_passed": True,
               "entries": {"train": f"train/{fingerprint * 16}"}}
              for n, (fingerprint, accuracy) in enumerate([("a", 0.91), ("b", 0.93), ("a", 0.91), ("a", 0.91)])]
    # Measured on other test data: shown, but not what this run is compared with.
    logged.insert(0, {"flow_run_id": "other", "dataset": "mnist", "finished": "2026-11-30T00:00:00+00:00",
                      "test_data": "0123456789ab", "test_accuracy": 0.99})
    (Path(store) / "runs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in logged))
    folder = Path(store) / "runs" / "this-run"
    runner.write_run_report(store, folder, refs["report"], refs["model"], refs["metrics"], PARAMS, "mnist",
                            GateResult(passed=True, champion_accuracy=0.93, reason="it holds", verdict="promoted to champion"),
                            {"train": {"state": "Completed", "seconds": 1.0, "attempts": 1}})

    markdown = (folder / report.REPORT_MD).read_text()
    title, summary = markdown.split("\n\n## ")[:2]
    assert title.startswith("# mnist CNN") and summary.startswith("Summary\n")
    accuracy = refs["metrics"].test_accuracy
    assert f"**Test accuracy {accuracy:.4f}** on the test split ({refs['metrics'].test_count} images)" in summary
    assert "**Quality gate:** promoted to champion: it holds." in summary
    assert "**Compared with:** 0.9300, the best test accuracy promoted on the same test data." in summary
    assert f"**Training:** {refs['model'].epochs_run} epochs in " in summary
    assert f"epochs {PARAMS.epochs}, batch\\_size {PARAMS.batch_size}, learning\\_rate " in summary
    # The checksums come after everything a reader looks for first.
    assert markdown.index("## Provenance") > markdown.index("## Misclassified examples")
    assert markdown.index("SHA-256 of the decoded arrays") > markdown.index("## Provenance")
    # Three reruns of one model with one result are one row, counted; the newest last.
    assert "the best of the 4 runs before it on the same test data: 0.9300." in markdown
    page = _Page((folder / report.REPORT_HTML).read_text())
    earlier = page.tables[-1]
    assert len(earlier) == 4  # its header and three rows
    rows = markdown.split("## Earlier runs")[1].strip().splitlines()[-2:]
    assert rows[0].split("|")[1].strip() == "2026-12-02T00:00:00+00:00" and rows[0].rstrip("| ").endswith("1")
    assert rows[1].split("|")[1].strip() == "2026-12-04T00:00:00+00:00" and rows[1].rstrip("| ").endswith("3")


def test_a_run_log_line_of_odd_types_folds_without_failing_the_run(refs, tmp_path):
    """A hand-edited line whose values are lists or objects is shown as text; the run's report is still written."""
    import shutil

    from flows.gate import GateResult
    from tests.stages import PARAMS

    store = str(tmp_path / "store")
    shutil.copytree(refs["store"], store)
    odd = {"flow_run_id": "u", "dataset": "mnist", "test_data": ["a", 1], "learning_rate": {"x": 1}}
    (Path(store) / "runs.jsonl").write_text(json.dumps(odd) + "\n" + json.dumps(odd) + "\n")
    folder = Path(store) / "runs" / "this-run"
    runner.write_run_report(store, folder, refs["report"], refs["model"], refs["metrics"], PARAMS, "mnist",
                            GateResult(passed=True, champion_accuracy=None, reason="r", verdict="promoted to champion"),
                            {})
    markdown = (folder / report.REPORT_MD).read_text()
    assert "the best of the 0 runs before it on the same test data: none recorded." in markdown
    assert markdown.split("## Earlier runs")[1].strip().splitlines()[-1].rstrip("| ").endswith("2")
