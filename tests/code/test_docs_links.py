"""The documents' relative links lead somewhere: every link in README.md and docs/**/*.md to a file of the checkout
names a file or folder that exists, and a `#section` names a heading of the Markdown file it points into (GitHub's
heading anchors). Read from the files, nothing is rendered."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def links(text: str) -> list[str]:
    """The link targets of a Markdown text, fenced code blocks left out."""
    return LINK.findall(FENCE.sub("", text))


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: its text without Markdown links' targets and emphasis, lower case, punctuation
    dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = anchor(heading)
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def broken(path: Path) -> list[str]:
    problems = []
    for target in links(path.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        file_part, _, section = target.partition("#")
        linked = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{target}: no such file")
        elif section and linked.suffix == ".md" and section not in anchors(linked):
            problems.append(f"{target}: no heading #{section} in {os.path.relpath(linked, path.parent)}")
    return problems


def test_every_relative_link_in_the_documents_resolves():
    found = {str(p.relative_to(ROOT)): problems for p in documents() if (problems := broken(p))}
    assert found == {}


def test_the_link_check_finds_what_it_should(tmp_path):
    assert links('[a](x.md) `code` [b](y.md#sec "title")\n```\n[c](z.md)\n```\n') == ["x.md", "y.md#sec"]
    assert anchor("The main job, `make run`, timed") == "the-main-job-make-run-timed"
    assert anchor("`make run`'s own sample (the `cpu` profile)") == "make-runs-own-sample-the-cpu-profile"
    doc = tmp_path / "doc.md"
    doc.write_text("# Top\n## Part\n## Part\n[ok](doc.md#part-1) [gone](other.md) [no](#nowhere) [up](#top)\n")
    assert broken(doc) == ["other.md: no such file", "#nowhere: no heading #nowhere in doc.md"]
