"""The curvebench leaderboard: run records -> LEADERBOARD.md, runs.csv, cells.csv and figures.

    curvebench leaderboard [RESULTS_DIR] [-o FILE.md] [--check]   (default output: leaderboard-out/)

Modules: ``load`` (records -> DataFrame; bad files reported and skipped), ``spec`` (the table
definitions in ``tables.yaml`` and the paper's numbers in ``paper_numbers.yaml``), ``aggregate``
(cells, trust checks, MA), ``tables`` (markdown of one table), ``figures`` (Fig. 1, 5, 6 and MA
charts; its docstring lists the CurveNet artifacts it reads), ``report`` (the whole document and
the CSVs), ``cli``.
"""
