"""``curvebench leaderboard [RESULTS_DIR] [-o FILE.md] [--check]``.

Reads every result.json and failed.json under RESULTS_DIR (default ``$CURVEBENCH_RESULTS`` or
``./results``) and writes the markdown, runs.csv and cells.csv beside it, and the figures into
``figures/`` beside it. Unreadable record files are reported and left out, and the exit status is 1
unless ``--allow-unreadable``. The default output is ``leaderboard-out/LEADERBOARD.md``; the published
leaderboard is written only when named with -o. The output is a function of the records (no
wall-clock date), so ``--check`` can tell whether a published leaderboard is current.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import os
import shlex
import sys
import tempfile
from pathlib import Path

DEFAULT_OUTPUT = Path("leaderboard-out/LEADERBOARD.md")
PUBLISHED = Path("leaderboard/LEADERBOARD.md")


def _output_problem(out: Path) -> str | None:
    """Why the markdown file ``out`` (and its twins beside it) cannot be written, or None."""
    if out.is_dir():
        return f"-o {out} is a directory; give the markdown file, e.g. -o {out / 'LEADERBOARD.md'}"
    for folder in [out.parent, *out.parent.parents]:
        if folder.exists():
            if not folder.is_dir():
                return f"cannot write {out}: {folder} is a file, not a directory; pass -o a path in a directory"
            if not os.access(folder, os.W_OK | os.X_OK):
                return f"cannot write {out}: {folder} is not writable; pass -o a path in a writable directory"
            return None
    return None


def _files(out: Path) -> list[Path]:
    """The files a report at ``out`` consists of (markdown, CSVs, figures), relative to its folder."""
    from leaderboard.figures import FIGURE_PREFIXES
    from leaderboard.report import CELLS_CSV, FIGURES_DIR, RUNS_CSV

    folder = out.parent
    names = [Path(out.name), Path(RUNS_CSV), Path(CELLS_CSV)]
    figures = folder / FIGURES_DIR
    if figures.is_dir():
        names += sorted(p.relative_to(folder) for p in figures.glob("*.png") if p.name.startswith(FIGURE_PREFIXES))
    return [n for n in names if (folder / n).exists()]


def check_current(built: Path, published: Path) -> list[str]:
    """Files that differ between a fresh build at ``built`` and the report at ``published``."""
    new, old = _files(built), _files(published)
    differ = [str(published.parent / n) + " (missing)" for n in new if n not in old]
    differ += [str(published.parent / n) + " (not generated any more)" for n in old if n not in new]
    differ += [str(published.parent / n) for n in new if n in old
               and (built.parent / n).read_bytes() != (published.parent / n).read_bytes()]
    return differ


def main(argv: list[str]) -> int:
    from curvebench.paths import results_root

    p = argparse.ArgumentParser(prog="curvebench leaderboard", description=__doc__.split("\n\n")[1])
    p.add_argument("results", nargs="?", type=Path, default=None,
                   help="results directory (default: $CURVEBENCH_RESULTS or ./results)")
    p.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT,
                   help=f"markdown file (default: {DEFAULT_OUTPUT}; publish with -o {PUBLISHED})")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.add_argument("--strict", action="store_true",
                   help="exit with status 1 when a record file was skipped or a cell is flagged")
    p.add_argument("--allow-unreadable", action="store_true",
                   help="exit 0 even when record files could not be read (they are listed and left out)")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit with status 1 unless -o's markdown, CSVs and figures are exactly "
                        "what these records give (CI: the published leaderboard is current)")
    args = p.parse_args(argv)
    results = args.results if args.results is not None else results_root()
    if not results.is_dir():
        print(f"curvebench leaderboard: error: results directory {results} does not exist "
              "(pass RESULTS_DIR or set CURVEBENCH_RESULTS)", file=sys.stderr)
        return 2
    problem = None if args.check else _output_problem(args.output)
    if problem:
        print(f"curvebench leaderboard: error: {problem}", file=sys.stderr)
        return 2

    from curvebench.config import group_options
    from leaderboard.report import ReportOptions, build_report

    shown = [a for a in argv if a != "--check"]  # the command that regenerates the file
    command = " ".join(["curvebench", "leaderboard", *(shlex.quote(a) for a in shown)])
    options = ReportOptions(command=command, available_suites=set(group_options("experiment")),
                            figures=not args.no_figures)
    if args.check:
        with tempfile.TemporaryDirectory(prefix="curvebench-leaderboard-") as tmp:
            built = Path(tmp) / args.output.name
            build_report(results, built, options)
            differ = check_current(built, args.output)
            if differ and args.output.exists():  # what changed in the markdown, briefly
                diff = difflib.unified_diff(args.output.read_text().splitlines(), built.read_text().splitlines(),
                                            str(args.output), "rebuilt", n=0, lineterm="")
                shown_diff = [line[:300] for line in itertools.islice(diff, 40)]
                if shown_diff:
                    print("\n".join(shown_diff), file=sys.stderr)
        if differ:
            print(f"curvebench leaderboard: {args.output} is not what {results} gives; differs: "
                  f"{', '.join(differ)}. Regenerate with `{command}`", file=sys.stderr)
            return 1
        print(f"{args.output} is current: {len(_files(args.output))} files match the records under {results}")
        return 0
    try:
        report = build_report(results, args.output, options)
    except OSError as err:
        print(f"curvebench leaderboard: error: cannot write {args.output}: {err.strerror or err} "
              f"({err.filename or args.output}); pass -o a writable path", file=sys.stderr)
        return 2
    df = report.runs.frame
    for problem in report.runs.problems:
        print(f"skipped: {problem}", file=sys.stderr)
    n_done, n_failed = int((df["status"] == "done").sum()), int((df["status"] == "failed").sum())
    print(f"wrote {args.output} (+ runs.csv, cells.csv, {len(report.figures.figures)} figures): "
          f"{n_done} finished runs, {n_failed} failed, {len(report.runs.problems)} file(s) skipped, "
          f"{report.flagged_cells} flagged cell(s)")
    if report.runs.problems and not args.allow_unreadable:
        print(f"curvebench leaderboard: error: {len(report.runs.problems)} record file(s) could not be read and are "
              "missing from the tables (listed above); re-run their suite to re-train them, or pass "
              "--allow-unreadable", file=sys.stderr)
        return 1
    if args.strict and (report.runs.problems or report.flagged_cells):
        return 1
    return 0
