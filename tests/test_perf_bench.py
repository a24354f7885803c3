"""`curvebench perf` machinery: the reference-style MW-Net step computes what ours computes, the
command runs and skips what it cannot build, ratios are medians of per-round ratios, and the
run-time extrapolation adds up. Nothing here asserts a time."""

from __future__ import annotations

import json
import os

import pytest
import torch

from baselines.ce import CrossEntropy
from curvebench.models import build_model
from curvebench.perf.bench import MethodCase, Skip, run_cases
from curvebench.perf.extrapolate import PhaseEstimate, RunEstimate, estimate_run, sample_epochs, table1_sizes
from curvebench.perf.reference import mwnet_pair
from curvebench.perf.synthetic import synthetic_data
from curvebench.perf.timing import CaseTiming, TimingResult, interleaved
from tests.helpers import cli


@pytest.fixture(scope="module")
def tiny_data():
    return synthetic_data(torch.device("cpu"), n_train=128, n_meta=40, n_test=20)


def test_reference_style_mwnet_step_equals_the_functional_one():
    def build():
        return build_model("resnet8", 10).double()

    def sgd(model):
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    ours, ref = mwnet_pair(build, sgd, torch.device("cpu"))
    ours.vnet.double(), ref.vnet.double()
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        x, xm = torch.randn(6, 3, 16, 16, generator=g, dtype=torch.float64), torch.randn(6, 3, 16, 16, generator=g,
                                                                                        dtype=torch.float64)
        y, ym = torch.randint(0, 10, (6,), generator=g), torch.randint(0, 10, (6,), generator=g)
        torch.testing.assert_close(ours(x, y, xm, ym), ref(x, y, xm, ym))
    for a, b in zip(ours.vnet.parameters(), ref.vnet.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for (name, a), (_, b) in zip(ours.model.state_dict().items(), ref.model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
    # the weighting net did learn something (its gradient is not zero)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ours.vnet.parameters())


def test_perf_quick_prints_the_tables_and_writes_json(tmp_path, capsys):
    out = tmp_path / "perf.json"
    assert cli("perf", "--quick", "--models", "resnet8", "--methods", "ce", "curvenet", "--sl", "0", "3", "--batch-size", "4",
               "--rounds", "1", "--train-size", "64", "--json", str(out)) == 0
    text = capsys.readouterr().out
    for needle in ("ce", "curvenet SL0", "curvenet SL3", "mwnet functional (ours)", "mwnet reference (deepcopy)",
                   "meta_backward ms", "host syncs", "ATen ops", "load avg", "torch"):
        assert needle in text, needle
    data = json.loads(out.read_text())
    (rep,) = data["steps"]
    cases = rep["cases"]
    assert cases["ce"]["host_syncs_per_step"] == 0 and cases["ce"]["images_per_second"] > 0
    ops = {k: cases[k]["aten_ops_per_step"] for k in ("curvenet SL0", "curvenet SL3", "ce")}
    assert ops["curvenet SL0"] > ops["curvenet SL3"] > ops["ce"] > 0
    assert (cases["curvenet SL0"]["gflop_per_image"] > cases["curvenet SL3"]["gflop_per_image"]
            > cases["ce"]["gflop_per_image"])
    assert {"virtual", "meta_forward", "meta_backward", "real"} <= set(cases["curvenet SL0"]["phase_seconds_median"])
    names = {c["name"] for c in rep["checks"]}
    assert {"FLOPs curvenet SL0 / ce", "FLOPs curvenet SL3 / ce", "time meta_backward SL0 / SL3",
            "time mwnet reference / functional"} <= names
    assert all(c["ok"] is None for c in rep["checks"])  # the targets are for ResNet-32: information here
    assert "loadavg" in data["environment"] and data["environment"]["torch"] == torch.__version__


def test_a_method_that_cannot_run_on_synthetic_data_is_skipped_with_its_reason(tiny_data, tmp_path, monkeypatch):
    def broken_setup(self):
        raise FileNotFoundError("needs the probe curves of an earlier run")

    monkeypatch.setattr(CrossEntropy, "setup", broken_setup)
    case = MethodCase("ce", "resnet8", tiny_data, torch.device("cpu"), tmp_path, batch_size=4)
    with pytest.raises(Skip, match="needs the probe curves"):
        case.build()
    rep = run_cases([case], "resnet8", torch.device("cpu"), rounds=1, steps=1, warmup=0, log=lambda s: None)
    assert "needs the probe curves" in rep.results["ce"].skipped and rep.timing is None


def test_ratios_are_medians_of_per_round_ratios():
    a = CaseTiming("a", 8, seconds=[2.0, 10.0, 3.0], phases=[{"x": 1.0}, {"x": 5.0}, {"x": 1.5}])
    b = CaseTiming("b", 8, seconds=[1.0, 2.0, 1.0], phases=[{"x": 0.5}, {"x": 1.0}, {"x": 0.25}])
    t = TimingResult({"a": a, "b": b}, loadavg=[(0, 0, 0)], rounds=3, steps=1, wall_s=0)
    assert t.ratio("a", "b")[0] == 3.0  # per round 2, 5, 3 (the ratio of medians would be 3/1)
    assert t.ratio("a", "b", "x", "x")[0] == 5.0  # per round 2, 5, 6
    assert a.images_per_second == 8 / 3.0


def test_interleaved_rounds_rotate_the_order_and_time_phases():
    calls = []

    class Fake:
        def __init__(self, name):
            self.name, self.batch_size = name, 1

        def run_step(self, mark):
            calls.append(self.name)
            mark("p1")
            mark("p2")

    res = interleaved([Fake("a"), Fake("b"), Fake("c")], torch.device("cpu"), rounds=3, steps=1, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert set(res.cases["a"].phase_names()) <= {"step", "p1", "p2"} and len(res.loadavg) == 4


def test_extrapolation_charges_each_epoch_the_closest_earlier_sample():
    assert sample_epochs(200, [80, 100]) == [0, 80, 100]
    assert sample_epochs(50, [80, 100], extra=[10]) == [0, 10]
    p = PhaseEstimate("train", 200, 128, True, samples={0: 10.0, 80: 4.0, 100: 2.0}, eval_s=0.5)
    assert p.train_total_s == 80 * 10 + 20 * 4 + 100 * 2 and p.eval_total_s == 100.0
    run = RunEstimate("x", "resnet32", "cpu", 49000, [p])
    assert run.scaled_total_s(24500) == pytest.approx(p.train_total_s / 2 + 100.0)
    sizes = table1_sizes()
    assert sizes[1] == 49000 and sizes[100] == 12156


def test_estimate_run_measures_every_phase(tiny_data, tmp_path):
    est = estimate_run("ce", "resnet8", tiny_data, torch.device("cpu"), tmp_path, epochs=1, limit_batches=1,
                       overrides=["recipe.batch_size=16"], warmup_batches=1, log=lambda s: None)
    (phase,) = est.phases
    assert phase.epochs == 200 and sorted(phase.samples) == [0, 80, 100]
    assert phase.batches_per_epoch == 8 and all(s > 0 for s in phase.samples.values()) and phase.eval_s > 0
    assert est.total_s > 0


def test_concurrency_worker_waits_for_go_and_reports_json(monkeypatch, capsys):
    import io

    from curvebench.perf.concurrent import worker

    monkeypatch.setattr("sys.stdin", io.StringIO("GO\n"))
    args = ["--worker", "--model", "resnet8", "--batch-size", "4", "--duration", "0.2", "--train-size", "64"]
    assert worker(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "READY"
    result = json.loads(lines[-1])
    assert result["steps"] >= 1 and result["images_per_second"] > 0


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("CURVEBENCH_PERF_SUBPROCESS"),
                    reason="starts 2 Python processes (~30 s on a busy machine); set CURVEBENCH_PERF_SUBPROCESS=1")
def test_concurrent_workers_report_their_throughput():
    from curvebench.perf.concurrent import run_concurrent

    r = run_concurrent(2, model="resnet8", batch_size=4, duration=1.0, timeout=300)
    assert len(r["workers"]) == 2 and r["aggregate_images_per_second"] > 0


def test_the_registered_curvenet_is_timed_per_phase_at_every_slmo_level(tiny_data, tmp_path):
    """CurveNet marks its phases through ctx.mark_phase in train_step, and the methods whose config
    declares ``slmo`` (only those) are swept over the SL levels."""
    from curvebench.perf.bench import method_cases
    from curvebench.perf.report import _meta_cases, phase_table

    cases = method_cases(["ce", "curvenet"], "resnet8", tiny_data, torch.device("cpu"), tmp_path, batch_size=4,
                         at_epoch=0, overrides=[], sls=[0, 3])
    assert [c.name for c in cases] == ["ce", "curvenet SL0", "curvenet SL3"]
    rep = run_cases(cases, "resnet8", torch.device("cpu"), rounds=1, steps=1, warmup=0, log=lambda s: None)
    assert [c.method.cfg.slmo for c in cases[1:]] == [0, 3]  # the level reached the method
    assert {"virtual", "real"} <= set(rep.timing.cases["curvenet SL3"].phase_names())
    assert rep.results["curvenet SL0"].flops["real"] > 0 and rep.results["curvenet SL0"].flops["virtual"] > 0
    assert _meta_cases(rep) == {0: "curvenet SL0", 3: "curvenet SL3"}
    assert "curvenet SL3" in phase_table(rep)


@pytest.mark.parametrize("method, phases", [
    ("curvenet", ["virtual", "meta_forward", "meta_backward", "real"]),
    ("mwnet_noise", ["meta_loss", "meta_backward", "real"]),
    ("mwnet_imb", ["meta_loss", "meta_backward", "real"]),
    ("dynamic_loss", ["meta_loss", "meta_backward", "real"]),
])
def test_each_meta_method_marks_each_phase_once_per_step(method, phases, tiny_data, tmp_path):
    """One phase-marking mechanism: every meta method marks each of its phases exactly once per step
    (Dynamic Loss from its first meta epoch on)."""
    at_epoch = 5 if method == "dynamic_loss" else 0  # after its warm-up epochs
    data = synthetic_data(torch.device("cpu"), n_train=512, n_meta=40, n_test=20) if at_epoch else tiny_data
    case = MethodCase(method, "resnet8", data, torch.device("cpu"), tmp_path, batch_size=4, at_epoch=at_epoch)
    case.build()
    for _ in range(2):
        marks: list[str] = []
        case.run_step(marks.append)
        assert marks == phases


def test_compiled_cases_are_timed_next_to_their_eager_twins(tiny_data, tmp_path):
    """``--compiled``: every method case gets a twin with train.compile and train.compile_meta on, in
    the same interleaved rounds; the twin marks its meta step as one phase, shares its eager twin's
    FLOP count, and the checks report its speed-up, compile time and meta / CE ratios."""
    from curvebench.perf.bench import COMPILED, build_cases
    from curvebench.perf.report import format_report

    cases = build_cases("resnet8", tiny_data, torch.device("cpu"), tmp_path, methods=["ce", "curvenet"],
                        batch_size=4, at_epoch=0, overrides=["train.compile_backend=eager"], sls=[0, 3],
                        reference=False, compiled=True)
    names = [c.name for c in cases]
    assert names == ["ce", "curvenet SL0", "curvenet SL3", "ce" + COMPILED, "curvenet SL0" + COMPILED,
                     "curvenet SL3" + COMPILED]
    rep = run_cases(cases, "resnet8", torch.device("cpu"), rounds=1, steps=1, warmup=0, log=lambda s: None)
    compiled = cases[4]
    assert compiled.method.cfg.slmo == 0 and compiled.method._compiled_meta is not None
    assert cases[1].method._compiled_meta is None
    marked = set(rep.timing.cases["curvenet SL0" + COMPILED].phase_names())
    assert {"meta_step", "real"} <= marked and not marked & {"virtual", "meta_forward", "meta_backward"}
    assert rep.results["curvenet SL0" + COMPILED].flops == rep.results["curvenet SL0"].flops
    text = format_report(rep, torch.device("cpu"))
    for line in ("speed-up curvenet SL0: eager / compiled", "first step curvenet SL0 [compiled] (compile, s)",
                 "time curvenet SL0 [compiled] / ce (eager)", "time curvenet SL3 [compiled] / ce [compiled]"):
        assert line in text, line
