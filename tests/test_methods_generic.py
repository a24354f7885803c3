"""Contracts every registered method must meet: a config file, a smoke run, and no use of clean
training labels (the engine gives them to diagnostics only)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from curvebench.config import CONF_DIR, conf_dirs, group_options
from curvebench.data.hashing import file_digest
from curvebench.data.split import npz_bytes
from curvebench.engine.method import METHODS
from curvebench.engine.records import read_record
from curvebench.methods import builtin_methods, load_all_methods
from tests.helpers import cli, records, run_dirs

load_all_methods()
ALL = METHODS.names()


def test_registry_and_method_configs_agree():
    """Built-in methods have their file in curvebench/conf/method; with plugins installed, every
    registered method has exactly one file on the config search path."""
    files = {p.stem for p in (CONF_DIR / "method").glob("*.yaml")}
    assert files == set(builtin_methods())
    assert set(group_options("method")) == set(ALL)
    for name in ALL:
        (path,) = [d / "method" / f"{name}.yaml" for d in conf_dirs() if (d / "method" / f"{name}.yaml").is_file()]
        assert f"name: {name}" in path.read_text()
        assert (METHODS.get(name).__doc__ or "").strip(), f"{name} needs a docstring (paper, decisions)"


@pytest.mark.parametrize("method", ALL)
def test_every_method_runs_in_the_smoke_suite(workdirs, method):
    assert cli("smoke", f"method={method}") == 0
    (rec,) = records(workdirs["results"])
    read_record(next(workdirs["results"].rglob("result.json")))
    assert rec["method"] == method and rec["status"] == "done"
    assert rec["split"]["official"] is False  # synthetic data is never the official release


def _doctor_clean_labels(splits_dir):
    """Rewrite every stored split so that its clean labels equal the noisy ones."""
    for manifest_path in splits_dir.rglob("*.json"):
        manifest = json.loads(manifest_path.read_text())
        npz = manifest_path.parent / manifest["file"]
        with np.load(npz) as z:
            arrays = {k: z[k] for k in z.files}
        assert (arrays["clean_labels"] != arrays["noisy_labels"]).any(), "the smoke split must have noise"
        arrays["clean_labels"] = arrays["noisy_labels"].copy()
        blob = npz_bytes(arrays)
        npz.unlink()
        new = npz.parent / "tmp.npz"
        new.write_bytes(blob)
        sha = file_digest(new)
        new.rename(npz.parent / f"{sha}.npz")
        manifest.update(file=f"{sha}.npz", sha256=sha)
        manifest_path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("method", ALL)
def test_no_method_reads_clean_training_labels(workdirs, tmp_path, monkeypatch, method):
    """Training must be bit-identical whether the clean labels are the true ones or the noisy ones."""
    overrides = ("smoke", f"method={method}", "train.deterministic=true")
    assert cli(*overrides) == 0
    monkeypatch.setenv("CURVEBENCH_SPLITS", str(tmp_path / "doctored"))
    monkeypatch.setenv("CURVEBENCH_RESULTS", str(tmp_path / "doctored-results"))
    assert cli("splits", "smoke") == 0
    _doctor_clean_labels(tmp_path / "doctored")
    assert cli(*overrides) == 0
    (a,), (b,) = records(workdirs["results"]), records(tmp_path / "doctored-results")
    assert a["split_sha256"] != b["split_sha256"]
    assert a["split"]["realized_noise_rate"] > 0 and b["split"]["realized_noise_rate"] == 0
    assert a["metrics"]["top1_per_epoch"] == b["metrics"]["top1_per_epoch"]
    assert [p["loss_per_epoch"] for p in a["phases"]] == [p["loss_per_epoch"] for p in b["phases"]]
    (dir_a,), (dir_b,) = run_dirs(workdirs["results"]), run_dirs(tmp_path / "doctored-results")
    wa, wb = torch.load(dir_a / "model.pt"), torch.load(dir_b / "model.pt")
    for net in wa:
        for key in wa[net]:
            assert torch.equal(wa[net][key], wb[net][key]), f"{method}: {net}.{key} depends on clean labels"


@pytest.mark.parametrize("method", ALL)
def test_every_method_runs_under_bf16_autocast(workdirs, method):
    """`train.bf16=true` autocasts the training step; per-sample state must keep its own dtype.

    That autocast actually ran is observed inside the networks' forward passes: a global forward
    hook records the dtype of every convolution / linear output while the run trains. Evaluation
    stays fp32, so bf16 outputs can only come from autocast around the method's training step."""
    dtypes: list[torch.dtype] = []

    def hook(module, inputs, output):
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and isinstance(output, torch.Tensor):
            dtypes.append(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        assert cli("smoke", f"method={method}", "train.bf16=true") == 0
    finally:
        handle.remove()
    (rec,) = records(workdirs["results"])
    assert rec["status"] == "done" and rec["config"]["train"]["bf16"] is True
    assert torch.bfloat16 in dtypes, f"{method}: no bf16 activation seen, autocast did not run"
    assert torch.float32 in dtypes  # evaluation (and the fp32 meta passes) are not autocast
