"""bench/results/ and the docs agree: every result file a doc names exists, and every file kept
there is listed in bench/README.md (the history of older runs is a table there, not files)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
# issue7-s7.json, issue7-s7-profile-c8.{txt,svg}, bench/results/issue7-s7.md ...
RESULT_NAME = re.compile(r"\b(issue7-[\w-]+?)(?:\.\{([\w,]+)\}|\.(json|md|txt|svg))")


def _docs() -> list[Path]:
    return [REPO / "README.md", REPO / "CHANGELOG.md", REPO / "bench" / "README.md",
            *sorted((REPO / "docs").glob("*.md"))]


def _named_files(text: str) -> set[str]:
    names: set[str] = set()
    for stem, braces, ext in RESULT_NAME.findall(text):
        for suffix in (braces.split(",") if braces else [ext]):
            names.add(f"{stem}.{suffix}")
    return names


def test_the_name_pattern_reads_brace_lists() -> None:
    assert _named_files("`issue7-s7-profile-c8.{txt,svg}` and bench/results/issue7-s7.md") == {
        "issue7-s7-profile-c8.txt", "issue7-s7-profile-c8.svg", "issue7-s7.md"}


def test_every_result_file_a_doc_names_exists() -> None:
    for doc in _docs():
        for name in _named_files(doc.read_text(encoding="utf-8")):
            assert (RESULTS / name).is_file(), f"{doc.relative_to(REPO)} names missing {name}"


def test_every_kept_result_is_listed_in_the_bench_readme() -> None:
    listed = _named_files((REPO / "bench" / "README.md").read_text(encoding="utf-8"))
    kept = {p.name for p in RESULTS.iterdir() if p.is_file()}
    assert kept, "bench/results/ keeps the latest full run"
    assert kept <= listed, sorted(kept - listed)
