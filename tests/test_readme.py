"""The README is a user guide that must keep working: its set-up commands, its links, and the
three-line JSONL task with its plan file, which build a task as written."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import circuitlens as cl

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _block_after(marker: str, lang: str) -> str:
    """The first fenced ``lang`` block after the first mention of ``marker``."""
    rest = README[README.index(marker) :]
    match = re.search(rf"```{lang}\n(.*?)```", rest, re.DOTALL)
    assert match, f"no ```{lang} block after {marker!r} in README.md"
    return match.group(1)


def test_readme_is_short_and_names_the_two_set_up_commands() -> None:
    assert len(README.splitlines()) <= 120
    commands = re.findall(r"^bash (scripts/\S+)", README, re.MULTILINE)
    assert commands == ["scripts/demo.sh", "scripts/test.sh"]
    assert all((ROOT / c).is_file() for c in commands)


def test_readme_task_and_plan_build_a_task(tmp_path: Path) -> None:
    (tmp_path / "my_task.jsonl").write_text(_block_after("`my_task.jsonl`", "json"))
    (tmp_path / "my_task.plan.json").write_text(_block_after("`my_task.plan.json`", "json"))
    task = cl.get_task("jsonl", path=tmp_path / "my_task.jsonl")
    assert task.position_names == ("last", "S2")
    assert [s.group for s in task.circuit_plan] == ["name_movers", "s_inhibition", "induction"]
    prompts = [p for s in ("train", "val", "test", "probe") for p in task.split(s)]
    assert len(prompts) == 3
    for p in prompts:  # S2: the subject named again; in the corrupted prompt, the answer's name
        start, end = p.spans["S2"]
        assert p.text[start:end] == p.text.split()[1]
        assert p.corrupted is not None and p.corrupted_spans is not None
        start, end = p.corrupted_spans["S2"]
        assert " " + p.corrupted[start:end] == p.answer


def _prose(path: Path) -> str:
    """A markdown file without its fenced code (no links or headings in there)."""
    return re.sub(r"```.*?```", "", path.read_text(), flags=re.S)


@functools.cache
def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a markdown file: lowercased, punctuation dropped, spaces to
    hyphens; a repeated heading gets -1, -2, ..."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", _prose(path), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_docs_links_and_their_anchors_resolve() -> None:
    """Every relative link in the README and docs/ names a file that exists and, where it has
    one, an anchor that is a heading of that file (a renamed heading breaks its links)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    links = {page: re.findall(r"\]\(([^)\s#]*)(?:#([^)\s]+))?\)", _prose(page)) for page in pages}
    assert links[ROOT / "README.md"]
    broken = []
    for page in pages:
        for target, anchor in links[page]:
            if target.startswith(("http:", "https:", "mailto:")):
                continue
            path = (page.parent / target).resolve() if target else page
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{page.relative_to(ROOT)}: {target}#{anchor} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)
