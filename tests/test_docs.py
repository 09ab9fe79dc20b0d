"""The docs hold together: every link resolves, link texts name their targets, sources are in the repo."""

import re
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
PAGES = sorted([REPOSITORY / "README.md", *REPOSITORY.glob("docs/**/*.md"), *REPOSITORY.glob("benchmarks/results/*.md")])
LINK = re.compile(r"\[([^\]]+)\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPOSITORY)))
def test_links_resolve_and_file_names_match_their_targets(page):
    text = page.read_text()
    for label, target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        assert (page.parent / target).exists(), f"{page.name}: [{label}]({target}) points nowhere"
        if label.endswith(".md"):
            assert target.endswith(label), f"{page.name}: link text {label!r} names another file than {target!r}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPOSITORY)))
def test_pages_cite_the_repository_not_outside_notes(page):
    text = page.read_text()
    assert not re.search(r"(?<![\w/])reference\.md|shared/", text), f"{page.name} cites a file outside the repository"
    assert not re.search(r"\bthe issue'?s?\b", text, re.I), f"{page.name} speaks of an issue, not of acceptance criteria"


def test_code_cites_the_references_page_that_exists():
    cited = {m for path in (REPOSITORY / "src").rglob("*.py") for m in re.findall(r"[\w/]*references?\.md", path.read_text())}
    assert cited <= {"docs/references.md"}, cited
    sections = set(re.findall(r"^#+ (\d+(?:\.\d+)?) ", (REPOSITORY / "docs" / "references.md").read_text(), re.M))
    for path in (REPOSITORY / "src").rglob("*.py"):
        for section in re.findall(r"docs/references\.md\s*(?:#\s*)?§(\d+(?:\.\d+)?)", path.read_text()):
            assert section in sections, f"{path.name} cites docs/references.md §{section}, which does not exist"
