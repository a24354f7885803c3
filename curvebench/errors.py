"""The errors a user can fix. Each message says what to change; the CLI prints it on one line.

``ConfigError``: a configuration that cannot run. ``DataError``: a data problem (missing file, bad
checksum, invalid split spec). ``RecordError``: a run record that cannot be read or does not follow
the schema. Every layer imports them from here, so no module needs another's internals for them.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot run; the message says what to change."""


class DataError(RuntimeError):
    """A data problem the user must fix; the message always says what to do."""


class RecordError(ValueError):
    """A run record that cannot be read or does not follow the schema."""
