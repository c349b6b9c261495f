"""The README starts where a newcomer starts, stays short, and its links and the docs' links lead somewhere."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def _sections(text: str) -> list[tuple[str, list[str]]]:
    """The `## ` sections: each title with its lines, the heading included."""
    sections: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("## "):
            sections.append((line[3:].strip(), []))
        if sections:
            sections[-1][1].append(line)
    return sections


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [link for link in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", link)]


def test_the_quick_start_is_the_first_section_and_short():
    title, lines = _sections(README.read_text())[0]
    assert title == "Quick start"
    assert len(lines) < 40, len(lines)


def test_the_readme_is_under_250_lines():
    assert len(README.read_text().splitlines()) < 250


def test_the_quick_start_runs_offline_then_tests_and_serves():
    quick = "\n".join(_sections(README.read_text())[0][1])
    steps = ["make install", "make data", 'make run ARGS="--mirror data/mnist', "make test", "make serve",
             "make stop"]
    places = [quick.find(step) for step in steps]
    assert -1 not in places, dict(zip(steps, places))
    assert places == sorted(places), dict(zip(steps, places))
    assert "make system-deps" in quick and "http://127.0.0.1:4200" in quick
    picture = re.search(r"!\[[^]]+\]\(([^)]+\.png)\)", quick)
    assert picture and (ROOT / picture.group(1)).stat().st_size < 200_000


def test_the_readme_names_every_make_target():
    phony = re.search(r"^\.PHONY: (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    commands = "\n".join(dict(_sections(README.read_text()))["Commands"])
    assert [t for t in phony if not re.search(rf"`make {t}(`| ARGS)", commands)] == []


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_leads_to_a_file_and_heading(page):
    assert _links(README), "no links found: the pattern is wrong"
    for link in _links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.is_file(), f"{page.name}: {link}"
        if anchor and target.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", target.read_text(), flags=re.S), re.M)
            assert anchor in {_anchor(h) for h in headings}, f"{page.name}: {link}"
