"""curvebench: a reproducible benchmark for learning with noisy labels and class imbalance.

The package ``curvenet`` holds the harness (data protocol, engine, configs, CLI) and the CurveNet
method itself; ``baselines`` holds every other method; ``leaderboard`` turns run records into tables.
"""

__version__ = "0.1.0"
