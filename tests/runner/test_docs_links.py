"""The project explains itself: its README and docs link only to files in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parents[2]
PAGES = [
    PROJECT_DIR / "README.md",
    *sorted((PROJECT_DIR / "docs").glob("*.md")),
    PROJECT_DIR / "bench" / "README.md",
]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(PROJECT_DIR)))
def test_every_relative_link_names_a_file_of_the_repository(page: Path) -> None:
    missing = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.exists() or PROJECT_DIR not in path.parents:
            missing.append(target)
    assert missing == [], f"{page.name} links to files not in the repository: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(PROJECT_DIR)))
def test_no_page_sends_the_reader_to_documents_outside_the_repository(page: Path) -> None:
    text = page.read_text()
    assert not re.search(r"\b(DESIGN|STYLE|SPEC)\.md\b", text), (
        f"{page.name} names a document the repository lacks"
    )
