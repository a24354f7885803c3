"""A curvebench plugin: ``label_smoothing`` (a method) and ``stripes`` (a dataset), registered through
the entry points in this package's pyproject.toml; their configs are in ``conf/``."""
