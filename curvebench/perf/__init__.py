"""`curvebench perf`: step timing, FLOP counts, host-sync checks and run-time extrapolation on
synthetic CIFAR-shaped data (PERFORMANCE.md)."""
