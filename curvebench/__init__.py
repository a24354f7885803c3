"""curvebench: a reproducible benchmark for learning with noisy labels and class imbalance.

``curvebench`` is the harness (data protocol, engine, configs, suites, workers, CLI, perf);
``curvenet`` is the paper's method and ``baselines`` every other method, both plugins of the
harness; ``leaderboard`` turns run records into tables. Imports run one way: methods -> harness.
"""

__version__ = "0.1.0"
