# curvebench image: the exact versions of requirements/lock.txt on python:3.11-slim.
#
# The CUDA libraries come with the pinned PyPI torch wheels (CUDA 13.0), so the host needs only
# the NVIDIA driver (>= 580.65.06, CUDA 13.0) and the NVIDIA Container Toolkit; it also runs on CPUs.
#
#   docker build -t curvebench \
#     --build-arg UID="$(id -u)" --build-arg GID="$(id -g)" \
#     --build-arg CURVEBENCH_GIT_SHA="$(git rev-parse HEAD)" .
#   docker run --rm --gpus all -v "$PWD/results:/results" curvebench smoke
#
# Layer order keeps rebuilds cheap: the lock install (about 5.5 GB) is cached until the lock, the
# base image or UID/GID change; a source change rebuilds only the small project layer.

# -- stage 1: the curvebench package, installed into an overlay of /opt/venv -------------------
FROM python:3.11-slim AS project
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# .dockerignore lets through only pyproject.toml, README.md, the lock and the packages
COPY . /src
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-deps --root /overlay /src

# -- stage 2: the runtime image -----------------------------------------------------------------
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    CURVEBENCH_DATA=/data \
    CURVEBENCH_SPLITS=/splits \
    CURVEBENCH_RESULTS=/results \
    CUBLAS_WORKSPACE_CONFIG=:4096:8 \
    MPLCONFIGDIR=/tmp/matplotlib \
    CURVEBENCH_CONTAINER=1
WORKDIR /work
# As UID 0, curvebench refuses to start here (CURVEBENCH_CONTAINER=1; opt in: CURVEBENCH_ALLOW_ROOT=1)
ENTRYPOINT ["curvebench"]
CMD ["--help"]

# Fashion-MNIST (the fmnist suite) from Debian: the four IDX files land in
# /usr/share/datasets/fashion-mnist/, where the reader finds them without a data mount or network.
# Pinned to the packaged upstream snapshot (any Debian revision of it: the reader checks the content).
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist=0.0~git20200523.55506a9-* \
 && rm -rf /var/lib/apt/lists/*

# The user that runs the benchmark: pass the host's UID/GID so that files written to bind-mounted
# results are the host user's (docker-compose.yml does).
ARG UID=1000
ARG GID=1000
RUN if [ "$UID" = 0 ] || [ "$GID" = 0 ]; then echo "UID/GID must not be 0: the image runs as a non-root user" >&2; exit 1; fi \
 && (getent group "$GID" >/dev/null || groupadd --gid "$GID" bench) \
 && useradd --no-log-init --non-unique --uid "$UID" --gid "$GID" --create-home --home-dir /home/bench \
      --shell /bin/bash bench \
 && mkdir -p /data /splits /results \
 && chown "$UID:$GID" /splits /results /work

COPY requirements/lock.txt /opt/curvebench/lock.txt
# As scripts/setup.sh: every package of the lock at its pinned version (setuptools included: torch
# 2.13 needs one newer than the venv's); pip check verifies the set.
RUN python -m venv /opt/venv \
 && pip install -r /opt/curvebench/lock.txt \
 && pip check

COPY --from=project /overlay/ /

# Provenance written into every result.json (curvebench/engine/records.py reads these). Declared
# after the big layer (a changed ARG invalidates every later RUN); one ARG/ENV step each, since
# every step copies the whole image on some storage drivers.
ARG CURVEBENCH_GIT_SHA="" CURVEBENCH_GIT_DIRTY=0 CURVEBENCH_IMAGE=curvebench
ENV CURVEBENCH_GIT_SHA=$CURVEBENCH_GIT_SHA \
    CURVEBENCH_GIT_DIRTY=$CURVEBENCH_GIT_DIRTY \
    CURVEBENCH_IMAGE=$CURVEBENCH_IMAGE
USER $UID:$GID
