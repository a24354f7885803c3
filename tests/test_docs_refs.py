"""The design record lives in the repository: every ``docs/<file>.md §N`` and ``PERFORMANCE.md §N``
reference anywhere in the tree (code, configs, docs, README, the leaderboard generator's text) names
a heading that exists, a bare ``§N`` inside a numbered document names one of its own headings, and
no file points outside the repository (the research notes, paths of the development machine).

A heading defines section N when it starts with ``§N`` or ``N.`` / ``N`` (``## §3 Noise``,
``### §1.2 Meta set``, ``## 6. GPU``, ``### 6.2 Targets``). A reference may chain sections of one
file: ``docs/methods.md §5, §6 and §2.7``.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Not scanned: run records (result.json / failed.json record the machine's paths by design). The
# published leaderboard is scanned like any other file (CI also checks that it is current).
SKIPPED_PREFIXES = ("leaderboard/runs/", "tests/fixtures/leaderboard/results/")
GENERATED: tuple[str, ...] = ()
SKIPPED_DIRS = {".git", ".venv", "__pycache__", "results", "data", "splits", ".pytest_cache", ".ruff_cache"}
MAX_BYTES = 2 << 20

NUM = r"\d+(?:\.\d+)*"
CHAIN = rf"§{NUM}(?:(?:, and |, | and | or |/)§{NUM})*"
FILE_REF = re.compile(rf"(?<![\w./-])((?:docs/[\w.-]+|PERFORMANCE)\.md) ({CHAIN})")
ANY_MD_REF = re.compile(r"(?<![\w./-])([\w./-]+\.md) §\d")
BARE = re.compile(rf"(?<![\w.])§({NUM})")
HEADING = re.compile(rf"^#{{1,6}}\s+(?:§\s*)?({NUM})\.?(?=\s|$)", re.M)
# spelled in pieces so that this file does not match itself
FORBIDDEN = ("../" + "shared", "shared/" + "research", "research/" + "methods.md", "research/" + "performance.md",
             "/" + "work/", "/" + "root/")
NUMBERED_DOCS = ("docs/methods.md", "PERFORMANCE.md")  # their bare §N refer to their own headings


def text_files(root: Path) -> list[str]:
    """Tracked and untracked-but-not-ignored text files, relative to ``root``."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        out = [str(p.relative_to(root)) for p in root.rglob("*")
               if p.is_file() and not SKIPPED_DIRS.intersection(p.relative_to(root).parts)]
    files = []
    for rel in sorted(set(out)):
        if rel.startswith(SKIPPED_PREFIXES) or rel in GENERATED:
            continue
        path = root / rel
        if not path.is_file() or path.stat().st_size > MAX_BYTES:
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        files.append(rel)
    return files


def sections(path: Path) -> set[str]:
    """The section numbers defined by the headings of a markdown file (empty if it does not exist)."""
    return set(HEADING.findall(path.read_text(encoding="utf-8"))) if path.is_file() else set()


def check_tree(root: Path, files: list[str] | None = None) -> list[str]:
    """Every problem found, as ``path:line: message``; empty when the tree is clean."""
    files = text_files(root) if files is None else files
    cache: dict[str, set[str]] = {}

    def known(target: str) -> set[str]:
        if target not in cache:
            cache[target] = sections(root / target)
        return cache[target]

    problems = []
    for rel in files:
        text = (root / rel).read_text(encoding="utf-8")
        for lineno, line in enumerate(text.splitlines(), 1):
            where = f"{rel}:{lineno}"
            for bad in FORBIDDEN:
                if bad in line:
                    problems.append(f"{where}: points outside the repository ({bad!r})")
            for m in ANY_MD_REF.finditer(line):
                name = m.group(1)
                if not (name.startswith("docs/") or name == "PERFORMANCE.md"):
                    problems.append(f"{where}: {name} § is not a path in the repository "
                                    "(write docs/<file>.md §N or PERFORMANCE.md §N)")
            spans = []
            for m in FILE_REF.finditer(line):
                target = m.group(1)
                spans.append(m.span())
                if not (root / target).is_file():
                    problems.append(f"{where}: {target} does not exist")
                    continue
                for number in re.findall(NUM, m.group(2)):
                    if number not in known(target):
                        problems.append(f"{where}: {target} §{number} has no heading")
            if rel in NUMBERED_DOCS:
                for m in BARE.finditer(line):
                    if any(a <= m.start() < b for a, b in spans):
                        continue
                    if m.group(1) not in known(rel):
                        problems.append(f"{where}: §{m.group(1)} has no heading in {rel}")
    return problems


# -- the tree ------------------------------------------------------------------------------------
def test_every_section_reference_in_the_tree_resolves():
    problems = check_tree(ROOT)
    assert not problems, "dangling or outside references:\n" + "\n".join(problems)


def test_the_references_that_matter_are_scanned():
    files = set(text_files(ROOT))
    for rel in ("docs/methods.md", "PERFORMANCE.md", "README.md", "docs/DOCKER.md", "docs/ARCHITECTURE.md",
                "baselines/mwnet.py", "curvenet/method.py", "curvebench/conf/method/curvenet.yaml",
                "leaderboard/report.py", "leaderboard/paper_numbers.yaml",
                "tests/fixtures/leaderboard/expected/LEADERBOARD.md"):
        assert rel in files, rel
    refs = sum(len(FILE_REF.findall((ROOT / rel).read_text(encoding="utf-8"))) for rel in files)
    assert refs >= 60  # the code and configs cite the design record throughout


def test_methods_md_has_a_section_per_method():
    heads = (ROOT / "docs" / "methods.md").read_text(encoding="utf-8")
    for n, key in [(2, "`curvenet`"), (3, "`ce`"), (4, "`focal`"), (5, "`cb`"), (6, "`ldam_drw`"),
                   (7, "`coteaching`"), (8, "`o2u`"), (9, "`mwnet_noise`"), (10, "`mwnet_imb`"), (11, "`har`"),
                   (12, "`dynamic_loss`"), (13, "`dal`")]:
        assert re.search(rf"^## §{n} .*{re.escape(key)}", heads, re.M), (n, key)
    assert "`curvenet_drw`" in re.search(r"^## §2 .*$", heads, re.M).group(0)


# -- the checker itself ----------------------------------------------------------------------------
# The example references are assembled at run time (``MD``), so that the scan of the tree above does
# not read them as references of this file.
MD = ".md"
DOCS, PERFMD = f"docs/methods{MD}", f"PERFORMANCE{MD}"


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    return tmp_path


DOC = "# Record\n\n## §1 Protocol\n\n### §1.2 Meta set\n\nSee §1.2 and §1.\n\n## §2 Methods\n"
PERF = "# Perf\n\n## 1. Step\n\n### 1.3 Ratios\n\nAs §1.3 says.\n"


def test_checker_accepts_resolving_references(tmp_path):
    root = _tree(tmp_path, {
        DOCS: DOC, PERFMD: PERF,
        "pkg/mod.py": f'"""See {DOCS} §1.2, §2 and §1; {PERFMD} §1.3."""\n',
        "conf/x.yaml": f"name: x   # {DOCS} §2\n",
    })
    assert check_tree(root, [DOCS, PERFMD, "pkg/mod.py", "conf/x.yaml"]) == []


def test_checker_reports_a_dangling_reference(tmp_path):
    root = _tree(tmp_path, {DOCS: DOC, PERFMD: PERF,
                            "pkg/a.py": f"# see {DOCS} §9.9\n", "pkg/b.py": f"# {DOCS} §1.2, §7\n",
                            "pkg/c.py": f"# {PERFMD} §4.4\n", "pkg/d.py": f"# docs/missing{MD} §1\n"})
    problems = check_tree(root, ["pkg/a.py", "pkg/b.py", "pkg/c.py", "pkg/d.py"])
    assert problems == [f"pkg/a.py:1: {DOCS} §9.9 has no heading",
                        f"pkg/b.py:1: {DOCS} §7 has no heading",
                        f"pkg/c.py:1: {PERFMD} §4.4 has no heading",
                        f"pkg/d.py:1: docs/missing{MD} does not exist"]


def test_checker_reports_bare_and_outside_references(tmp_path):
    root = _tree(tmp_path, {
        DOCS: DOC + "\nAs §3.1 shows.\n",
        "pkg/e.py": f"# methods{MD} §1 (not a path in the repo)\n",
        "pkg/f.py": "# from " + "/" + "work/" + "shared/" + "research/" + "methods" + MD + "\n",
        "pkg/g.md": "see ../" + "shared/notes\n",
    })
    problems = check_tree(root, [DOCS, "pkg/e.py", "pkg/f.py", "pkg/g.md"])
    assert f"{DOCS}:11: §3.1 has no heading in {DOCS}" in problems
    assert any(p.startswith(f"pkg/e.py:1: methods{MD} § is not a path") for p in problems)
    assert sum(p.startswith("pkg/f.py:1: points outside the repository") for p in problems) == 3
    assert any(p.startswith("pkg/g.md:1: points outside the repository") for p in problems)


def test_the_tree_check_fails_on_a_dangling_reference_added_to_the_tree(tmp_path):
    """The tree-level check, not only the line checker: a copy of a real file with one bad reference."""
    good = (ROOT / "baselines" / "focal.py").read_text(encoding="utf-8")
    root = _tree(tmp_path, {DOCS: (ROOT / "docs" / "methods.md").read_text(encoding="utf-8"),
                            "baselines/focal.py": good + f"# see {DOCS} §99\n"})
    problems = check_tree(root, ["baselines/focal.py"])
    assert problems == [f"baselines/focal.py:{len(good.splitlines()) + 1}: {DOCS} §99 has no heading"]
