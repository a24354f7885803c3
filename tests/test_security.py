"""Files that others can write never run code: safe checkpoints, a crafted checkpoint refused, and a
scan of the code for unpickling or evaluating anything outside the vetted places (docs/SECURITY.md)."""

from __future__ import annotations

import ast
import builtins
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import curvebench.engine.loop as loop
from curvebench.engine.checkpoint import decode, encode, rng_state, set_rng_state
from curvebench.run import run_planned
from curvebench.suites import plan_suite
from tests.helpers import assert_same_result, interrupted_run, reference_run
from tests.test_engine import DIGITS_CE

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# checkpoints: what every method saves loads with weights_only=True, exactly
# ------------------------------------------------------------------------------------------------
def test_numpy_values_round_trip_exactly_through_the_checkpoint_encoding():
    values = {
        "u4": np.arange(7, dtype=np.uint32) * 600_000_000, "f8": np.linspace(0, 1, 6).reshape(2, 3),
        "bool": np.array([True, False]), "f2": np.array([1.5, -2.25], dtype=np.float16),
        "big_endian": np.arange(3, dtype=">i4"), "strided": np.arange(12.0).reshape(3, 4)[:, ::2],
        "zero_d": np.array(3.5), "scalar": np.float64(0.1), "int_scalar": np.int64(-3),
    }
    data = encode({"state": values, "tensor": torch.ones(2), "nested": [np.zeros(1), (np.ones(2),)]})
    out = decode(torch.load(_saved(data), weights_only=True))
    for name, value in values.items():
        back = out["state"][name]
        assert type(back) is type(value) and back.dtype == value.dtype, name
        assert np.array_equal(back, value) and np.shape(back) == np.shape(value), name
    assert torch.equal(out["tensor"], torch.ones(2)) and isinstance(out["nested"][1], tuple)
    with pytest.raises(TypeError, match="object arrays"):
        encode({"bad": np.array([object()])})
    with pytest.raises(TypeError, match="cannot be checkpointed safely"):
        encode({"bad": object()})


def _saved(data):
    import io

    buf = io.BytesIO()
    torch.save(data, buf)
    buf.seek(0)
    return buf


def test_rng_states_round_trip_through_a_safe_load():
    gens = {"data": torch.Generator().manual_seed(5)}
    np.random.seed(3), random.seed(4), torch.manual_seed(6)
    np.random.standard_normal()  # numpy caches a gaussian: part of its state
    state = torch.load(_saved(encode(rng_state(gens))), weights_only=True)
    expected = (np.random.standard_normal(3), random.random(), torch.rand(2), torch.rand(2, generator=gens["data"]))
    np.random.seed(0), random.seed(0), torch.manual_seed(0)
    gens["data"].manual_seed(0)
    set_rng_state(decode(state), gens)
    again = (np.random.standard_normal(3), random.random(), torch.rand(2), torch.rand(2, generator=gens["data"]))
    assert np.array_equal(expected[0], again[0]) and expected[1] == again[1]
    assert torch.equal(expected[2], again[2]) and torch.equal(expected[3], again[3])


METHOD_RUNS = {
    "o2u": ["method.pretrain_epochs=1", "method.cycle_length=2", "method.num_cycles=1"],
    "curvenet": ["method.probe.epochs=2", "method.probe.cyclic_epochs=2", "method.probe.cyclic_half_period=1",
                 "method.probe.cyclic_batch_size=null", "method.skip_first=1", "recipe.warmup_epochs=0",
                 "method.freeze_epoch=2"],
    "har": ["method.est_epochs=2"], "dynamic_loss": ["method.warm_epochs=1"],
}


@pytest.mark.slow
def test_every_methods_checkpoints_load_with_weights_only(workdirs, monkeypatch):
    """Every checkpoint of every phase of every registered method: a plain safe load reads it."""
    from curvebench.engine.method import METHODS
    from curvebench.methods import load_all_methods

    load_all_methods()
    written: list[Path] = []
    save = loop.save_checkpoint

    def keep(path, payload):
        save(path, payload)
        copy = path.with_name(f"saved-{len(written)}.pt")
        copy.write_bytes(path.read_bytes())
        written.append(copy)

    monkeypatch.setattr(loop, "save_checkpoint", keep)
    for name in sorted(METHODS.names()):
        start = len(written)
        (plan,) = plan_suite("digits", [f"method={name}", "seed=1", "split.imbalance_factor=10",
                                        "split.noise_rate=0.4", "recipe.epochs=3", "train.limit_batches=2",
                                        *METHOD_RUNS.get("curvenet" if name.startswith("curvenet") else name, [])])
        assert run_planned(plan) == "done", name
        assert len(written) > start, name
        for path in written[start:]:
            state = torch.load(path, weights_only=True)  # raises for anything but tensors and plain values
            assert {"phase", "epoch", "method", "rng", "history"} <= set(state), name


# ------------------------------------------------------------------------------------------------
# a crafted checkpoint: its payload never runs, the run restarts cleanly
# ------------------------------------------------------------------------------------------------
class _CreatesAFile:
    """Unpickling this calls open(target, "w"): the file appears if the loader runs pickled code."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (builtins.open, (self.target, "w"))


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy-pickle"])
def test_crafted_checkpoint_runs_no_code_and_the_run_restarts(workdirs, tmp_path, monkeypatch, capsys, zipfile):
    reference, _ = reference_run(DIGITS_CE)
    plan2 = interrupted_run(DIGITS_CE, tmp_path / "again", monkeypatch, 1)
    ckpt = plan2.run_dir / "checkpoint.pt"
    evidence = tmp_path / "pwned"
    torch.save({"phase": "train", "epoch": 2, "method": _CreatesAFile(evidence)}, ckpt,
               _use_new_zipfile_serialization=zipfile)
    crafted = ckpt.read_bytes()
    capsys.readouterr()

    assert run_planned(plan2) == "done"
    assert not evidence.exists(), "unpickling the checkpoint ran its payload"
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if "checkpoint" in ln]
    assert str(ckpt) in line and "safe load refuses it" in line and "open" in line
    assert "set aside as checkpoint.pt.refused-1" in line and line.endswith("the run restarts from scratch")
    assert (plan2.run_dir / "checkpoint.pt.refused-1").read_bytes() == crafted  # kept as it was, for inspection
    assert not (plan2.run_dir / "failed.json").exists()
    assert_same_result(plan2.run_dir, reference)


def _as_written_before(state: dict) -> dict:
    """A checkpoint payload in the format of earlier versions: numpy arrays and RNG tuples pickled as such."""
    rng = dict(state["rng"])
    n = rng["numpy"]
    rng["numpy"] = (n["algorithm"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    p = rng["python"]
    rng["python"] = (p["version"], tuple(p["internal"]), p["gauss_next"])
    return {**state, "rng": rng}


def test_checkpoint_of_an_earlier_version_resumes_exactly(workdirs, tmp_path, monkeypatch, capsys):
    """Checkpoints written before the safe format (numpy arrays, numpy's and Python's RNG tuples) still
    resume, bit-identically, under weights_only=True with numpy's array rebuilders allowed."""
    reference, ref_weights = reference_run(DIGITS_CE)
    plan2 = interrupted_run(DIGITS_CE, tmp_path / "again", monkeypatch, 1)
    ckpt = plan2.run_dir / "checkpoint.pt"
    old = _as_written_before(decode(torch.load(ckpt, weights_only=True)))
    assert isinstance(old["conf_last"], np.ndarray)
    torch.save(old, ckpt)  # as torch.save wrote it before: numpy globals in the pickle
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(ckpt, weights_only=True)
    capsys.readouterr()

    assert run_planned(plan2) == "done"
    assert "checkpoint" not in capsys.readouterr().err  # a plain resume
    assert_same_result(plan2.run_dir, reference, ref_weights)


# ------------------------------------------------------------------------------------------------
# the code scan: nothing unpickles or evaluates a file outside the vetted places
# ------------------------------------------------------------------------------------------------
SCANNED = ("curvebench", "curvenet", "baselines", "leaderboard", "scripts")
PATTERNS = {
    "weights_only=False": re.compile(r"weights_only\s*=\s*False"),
    "allow_pickle=True": re.compile(r"allow_pickle\s*=\s*True"),
    "pickle.load": re.compile(r"(?<![\w.])(c?pickle|_pickle|dill|joblib|pd)\.(load|loads|read_pickle)\b"),
    "Unpickler": re.compile(r"\bUnpickler\b"),
    "eval(": re.compile(r"(?<![\w.])eval\s*\("),
    "exec(": re.compile(r"(?<![\w.])exec\s*\("),
    "yaml.load": re.compile(r"\byaml\.(load|unsafe_load|full_load)\s*\("),
    "marshal/shelve": re.compile(r"\b(marshal\.loads?|shelve\.open)\b"),
}
# (path, pattern) pairs vetted by hand; each says why in docs/SECURITY.md
ALLOWED = {
    ("curvebench/data/py2pickle.py", "Unpickler"),  # CIFAR's pickles: a find_class allowing numpy arrays only
}


def violations(root: Path, dirs: tuple[str, ...] = SCANNED) -> list[str]:
    """``path:line: pattern`` for every unsafe read in the code under ``dirs`` of ``root``."""
    found = []
    files = sorted(p for d in dirs for p in (root / d).rglob("*") if p.is_file() and p.suffix in (".py", ".sh", ""))
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            code = line.split("#", 1)[0] if path.suffix == ".py" else line
            for name, pattern in PATTERNS.items():
                if pattern.search(code) and (rel, name) not in ALLOWED:
                    found.append(f"{rel}:{lineno}: {name}")
        if path.suffix == ".py":
            found += [f"{rel}:{n}: {what}" for n, what in _unsafe_loads(ast.parse(text))]
    return found


def _unsafe_loads(tree: ast.AST) -> list[tuple[int, str]]:
    """torch.load calls without weights_only=True; np.load calls whose allow_pickle is not False."""
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)):
            continue
        kw = {k.arg: k.value for k in node.keywords}
        module = node.func.value.id
        if module == "torch" and not _is_const(kw.get("weights_only"), True):
            out.append((node.lineno, "torch.load without weights_only=True"))
        if module in ("np", "numpy") and "allow_pickle" in kw and not _is_const(kw["allow_pickle"], False):
            out.append((node.lineno, "np.load with allow_pickle not False"))
    return out


def _is_const(node: ast.AST | None, value: bool) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def test_the_code_unpickles_and_evaluates_nothing_outside_the_vetted_places():
    assert all((ROOT / d).is_dir() for d in SCANNED)
    assert violations(ROOT) == []
    for rel, name in ALLOWED:  # the allowlist names places that exist (a stale entry is an error)
        assert PATTERNS[name].search((ROOT / rel).read_text()), (rel, name)


def test_the_code_scan_finds_each_kind_of_violation(tmp_path):
    pkg = tmp_path / "curvebench"
    pkg.mkdir()
    bad = {
        "torch.load(path, weights_only=False)": "weights_only=False",
        "torch.load(path)": "torch.load without weights_only=True",
        "np.load(path, allow_pickle=True)": "allow_pickle=True",
        "pickle.load(f)": "pickle.load",
        "pickle.loads(data)": "pickle.load",
        "class U(pickle.Unpickler): pass": "Unpickler",
        "eval(text)": "eval(",
        "exec(code)": "exec(",
        "yaml.load(text)": "yaml.load",
        "marshal.loads(b)": "marshal/shelve",
    }
    for i, (code, name) in enumerate(bad.items()):
        (pkg / f"m{i}.py").write_text(f"import pickle, torch, yaml, marshal\nimport numpy as np\n{code}\n")
        found = violations(tmp_path, ("curvebench",))
        assert any(f"curvebench/m{i}.py:3: {name}" in v for v in found), (code, found)
        (pkg / f"m{i}.py").unlink()
    safe = ("model.eval()\nnet.eval()\ntorch.load(p, weights_only=True)\nnp.load(p, allow_pickle=False)\n"
            "py2pickle.load(path)\n# eval(x) in a comment\njson.loads(s)\n")
    (pkg / "ok.py").write_text(safe)
    assert violations(tmp_path, ("curvebench",)) == []
    (tmp_path / "curvebench" / "data").mkdir()
    (tmp_path / "curvebench" / "data" / "py2pickle.py").write_text("class U(pickle.Unpickler): pass\n")
    assert violations(tmp_path, ("curvebench",)) == []  # the vetted place
