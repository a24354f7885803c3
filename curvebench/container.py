"""The container's root check (standard library only).

The image sets ``CURVEBENCH_CONTAINER=1``. Run as UID 0 there (``docker compose run`` from a shell
whose ``UID`` is 0, ``docker run --user 0``), curvebench would write root-owned files into the
bind-mounted splits and results, so it refuses unless ``CURVEBENCH_ALLOW_ROOT=1`` is set.
"""

from __future__ import annotations

import os
from typing import Mapping

CONTAINER_ENV = "CURVEBENCH_CONTAINER"
ALLOW_ROOT_ENV = "CURVEBENCH_ALLOW_ROOT"
ROOT_REFUSAL = (
    "curvebench: error: refusing to run as root (UID 0) in the container; run it as a non-root user "
    "(docker compose: `export UID GID=$(id -g)` as that user; docker run: `--user \"$(id -u):$(id -g)\"`), "
    f"or set {ALLOW_ROOT_ENV}=1 to run as root anyway"
)


def root_refusal(env: Mapping[str, str] | None = None, uid: int | None = None) -> str | None:
    """The one-line refusal when running as root inside the container without the opt-in, else None."""
    env = os.environ if env is None else env
    uid = os.geteuid() if uid is None else uid
    if env.get(CONTAINER_ENV) == "1" and uid == 0 and env.get(ALLOW_ROOT_ENV) != "1":
        return ROOT_REFUSAL
    return None
