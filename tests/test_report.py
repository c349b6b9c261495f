import base64
import io
import re

import matplotlib.image
import pytest

from flows import runner
from tasks import report
from tasks.engine.store import ArtifactStore
from tests.stages import run_stages

SECTIONS = ["Dataset", "Model", "Training", "Metrics", "Confusion matrix", "Predictions", "Misclassified examples"]


@pytest.fixture(scope="module")
def entry(tmp_path_factory, mirror):
    store = str(tmp_path_factory.mktemp("artifacts"))
    return ArtifactStore(store).path(run_stages(store, mirror)["report"])


def test_markdown_has_every_section_and_its_images(entry):
    text = (entry / report.REPORT_MD).read_text()
    for section in SECTIONS:
        assert f"## {section}\n" in text
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert matplotlib.image.imread(entry / image).size > 0


def test_html_is_self_contained_and_its_images_decode(entry):
    html = (entry / report.REPORT_HTML).read_text()
    for section in SECTIONS:
        assert f"<h2>{section}</h2>" in html
    images = re.findall(r"src=[\"']data:image/png;base64,([^\"']+)[\"']", html)
    assert len(images) == 5
    for data in images:
        assert matplotlib.image.imread(io.BytesIO(base64.b64decode(data)), format="png").ndim == 3
    assert "src='http" not in html and 'src="http' not in html


def test_report_shows_the_metrics_and_model(entry):
    text = (entry / report.REPORT_MD).read_text()
    assert "Test accuracy" in text and "121,930" in text and "sha256" in text
    assert "tensorflow-datasets" in text and "keras" in text  # library versions


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

    from tasks.engine.gate import GateResult

    earlier = [{"finished": f"2026-11-0{i + 1}", "test_accuracy": score} for i, score in enumerate(scores)]
    text = report.render("run.md.j2", gate=GateResult(passed=False, champion_accuracy=None, reason="r"),
                         timing=[{"stage": "train", "state": "Cached", "seconds": 0.5, "attempts": 1}],
                         dataset="mnist", metrics=SimpleNamespace(test_accuracy=0.9), earlier=earlier)
    assert f"the best of the {len(scores)} runs before it: {best}." in text
    assert "| train   | Cached  |    0.5000 |          1 |" in text
