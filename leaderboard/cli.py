"""``curvebench leaderboard [RESULTS_DIR] [-o leaderboard/LEADERBOARD.md]``.

Reads every result.json and failed.json under RESULTS_DIR (default ``$CURVEBENCH_RESULTS`` or
``./results``) and writes the markdown, runs.csv and cells.csv beside it, and the figures into
``figures/`` beside it. Unreadable record files are reported and left out, and the exit status is 1
unless ``--allow-unreadable``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

DEFAULT_OUTPUT = Path("leaderboard/LEADERBOARD.md")


def main(argv: list[str]) -> int:
    from curvenet.paths import results_root

    p = argparse.ArgumentParser(prog="curvebench leaderboard", description=__doc__.split("\n\n")[1])
    p.add_argument("results", nargs="?", type=Path, default=None,
                   help="results directory (default: $CURVEBENCH_RESULTS or ./results)")
    p.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT,
                   help=f"markdown file (default: {DEFAULT_OUTPUT})")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.add_argument("--strict", action="store_true",
                   help="exit with status 1 when a record file was skipped or a cell is flagged")
    p.add_argument("--allow-unreadable", action="store_true",
                   help="exit 0 even when record files could not be read (they are listed and left out)")
    args = p.parse_args(argv)
    results = args.results if args.results is not None else results_root()
    if not results.is_dir():
        print(f"curvebench leaderboard: error: results directory {results} does not exist "
              "(pass RESULTS_DIR or set CURVEBENCH_RESULTS)", file=sys.stderr)
        return 2

    from curvenet.config import group_options
    from leaderboard.report import ReportOptions, build_report

    command = " ".join(["curvebench", "leaderboard", *(shlex.quote(a) for a in argv)])
    options = ReportOptions(command=command, available_suites=set(group_options("experiment")),
                            figures=not args.no_figures)
    report = build_report(results, args.output, options)
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
