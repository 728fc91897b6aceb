"""The Markdown files hold together.

- Every result file is cited: each file under `docs/results/` and `experiments/*/results/` is named, by its path, in
  a Markdown file of the repository, so a result is kept only with the page that reports it. A path counts as cited
  where a Markdown file writes it relative to its own folder (a link such as `results/demo/metrics.json` in
  `docs/results.md`) or to the repository root (a command's `--json docs/results/import.json`), in a link, in code
  or in prose.
- Every relative link resolves: to a file that exists and, with a `#fragment`, to one of its headings.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ("docs/results", "experiments/*/results")
SKIPPED = {".git", "build", "dist", "node_modules", "__pycache__"}
PATH_LIKE = re.compile(r"[\w.\-/]+\.\w+")  # a token that may be a relative path to a file
LINK = re.compile(r"\]\(([^)\s]+)\)|<img src=\"([^\"]+)\"")  # [text](target), ![alt](target), <img src="target">


def markdown_files(root: Path) -> list[Path]:
    """The repository's Markdown files, outside hidden folders and build output."""
    pages = []
    for path in root.rglob("*.md"):
        parts = path.relative_to(root).parts
        if not any(part in SKIPPED or part.startswith(".") or part.endswith(".egg-info") for part in parts):
            pages.append(path)
    return pages


def result_files(root: Path) -> set[Path]:
    folders = [folder for pattern in RESULTS for folder in root.glob(pattern)]
    return {path.resolve() for folder in folders for path in folder.rglob("*") if path.is_file()}


def cited_paths(root: Path) -> set[Path]:
    """Every existing file that a Markdown file names, relative to its own folder or to `root` (itself excluded)."""
    cited = set()
    for page in markdown_files(root):
        for token in PATH_LIKE.findall(page.read_text(encoding="utf-8")):
            for base in (page.parent, root):
                path = (base / token).resolve()
                if path != page.resolve() and path.is_file():
                    cited.add(path)
    return cited


def uncited_results(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root.resolve())) for path in result_files(root) - cited_paths(root))


def test_every_result_file_is_cited_by_a_markdown_file():
    assert result_files(ROOT), "no result files found: were they moved?"
    assert uncited_results(ROOT) == []


def test_an_uncited_result_file_is_found(tmp_path):
    (tmp_path / "docs" / "results").mkdir(parents=True)
    (tmp_path / "experiments" / "study" / "results").mkdir(parents=True)
    for name in ("docs/results/cited.json", "docs/results/uncited.png", "experiments/study/results/run.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "docs" / "page.md").write_text("![figure](results/other.png) and [a table](results/cited.json).")
    (tmp_path / "experiments" / "study" / "README.md").write_text("`python study.py --json results/run1.json`")
    assert uncited_results(tmp_path) == ["docs/results/uncited.png", "experiments/study/results/run.json"]
    (tmp_path / "README.md").write_text("python study.py --json experiments/study/results/run.json")
    assert uncited_results(tmp_path) == ["docs/results/uncited.png"]


def heading_anchors(page: Path) -> set[str]:
    """The `#fragment`s GitHub gives the headings of a Markdown file: lower case, punctuation dropped, spaces to -."""
    headings = [line.lstrip("#").strip() for line in page.read_text(encoding="utf-8").splitlines() if line[:1] == "#"]
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def broken_links(root: Path) -> list[str]:
    broken = []
    for page in markdown_files(root):
        for match in LINK.finditer(page.read_text(encoding="utf-8")):
            target = match.group(1) or match.group(2)
            if re.match(r"[a-z]+:", target) or target.startswith("#"):  # a URL, or a heading of the page itself
                continue
            path, _, fragment = target.partition("#")
            linked = page.parent / path
            if not linked.exists() or (
                fragment and linked.suffix == ".md" and fragment not in heading_anchors(linked)
            ):
                broken.append(f"{page.relative_to(root)}: {target}")
    return broken


def test_every_relative_link_resolves():
    assert broken_links(ROOT) == []


def test_a_broken_link_or_heading_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n## Tiled decoding: `bench_tiling.py`\n")
    links = "[ok](docs/a.md#tiled-decoding-bench_tilingpy) [gone](docs/b.md) [heading](docs/a.md#nothing) [web](https://x.org)"
    (tmp_path / "README.md").write_text(links)
    assert broken_links(tmp_path) == ["README.md: docs/b.md", "README.md: docs/a.md#nothing"]
