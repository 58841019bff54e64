"""Every relative link in README.md and docs/*.md points to a file that exists, and every #anchor to a heading
of its target page (GitHub's heading ids), so moving or renaming a page or a heading cannot leave a dead link."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`]*`")


def prose_lines(text: str) -> list[str]:
    """The lines outside code blocks (fenced, or indented by four spaces after a blank line), inline code removed."""
    lines, in_fence, in_indented, previous_blank = [], False, False, True
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        if line.startswith("    ") and (previous_blank or in_indented) and not line.lstrip().startswith(("-", "*", "|")):
            in_indented = True
            previous_blank = False
            continue
        if line.strip():
            in_indented = False
        previous_blank = not line.strip()
        lines.append(INLINE_CODE.sub("", line))
    return lines


def heading_ids(text: str) -> set[str]:
    """GitHub's ids of a page's headings: lower case, punctuation dropped, spaces as hyphens, -1, -2 for repeats."""
    ids: set[str] = set()
    seen: dict[str, int] = {}
    in_fence = False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if in_fence or not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower().replace("`", "")).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        ids.add(slug if count == 0 else f"{slug}-{count}")
    return ids


def relative_links(page: Path) -> list[str]:
    targets = []
    for line in prose_lines(page.read_text(encoding="utf-8")):
        for target in LINK.findall(line):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:, …
                targets.append(target)
    return targets


def test_the_pages_exist_and_have_links() -> None:
    names = {page.name for page in PAGES}
    assert {"README.md", "data.md", "scaling.md", "checkpoints.md", "evaluation.md", "chat_and_serving.md",
            "instruct_data.md", "speed.md", "demo.md", "llava_parity.md", "precision.md"} <= names
    assert len(relative_links(ROOT / "README.md")) >= 15  # the README is a guide into docs/


def dead_links(page: Path) -> list[str]:
    """Each relative link of the page whose file or heading does not exist, with the reason."""
    problems = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in heading_ids(file.read_text(encoding="utf-8")):
            problems.append(f"{target}: no heading #{anchor} in {file.name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    problems = dead_links(page)
    assert not problems, f"{page.relative_to(ROOT)} has dead links:\n" + "\n".join(problems)


def test_the_checker_finds_dead_links(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text("# A title: with `code`\n\n## Same\n## Same\n\n"
                    "[ok](#a-title-with-code) [x](missing.md) [y](other.md#other) [z](other.md#gone) [w](#same-1)\n"
                    "[web](https://example.org/x.md) `[inline](nowhere.md)`\n\n"
                    "    [in code](nowhere.md)\n\n```\n[fenced](nowhere.md)\n```\n", encoding="utf-8")
    assert heading_ids(page.read_text(encoding="utf-8")) == {"a-title-with-code", "same", "same-1"}
    assert dead_links(page) == ["missing.md: no such file", "other.md#gone: no heading #gone in other.md"]


if __name__ == "__main__":  # python tests/test_docs_links.py: list the dead links of every page
    found = {page.relative_to(ROOT): dead_links(page) for page in PAGES}
    for name, problems in found.items():
        for problem in problems:
            print(f"{name}: {problem}")
    raise SystemExit(1 if any(found.values()) else 0)
