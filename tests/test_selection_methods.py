"""Co-teaching and O2U-Net: schedules, selections and normalisation checked by hand on tiny tensors,
config errors, diagnostics, no host sync in a step, and an exact resume of O2U's per-sample state."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from baselines.coteaching import CoTeaching, coteaching_losses, keep_rate, num_keep
from baselines.o2u import CYCLIC, PRETRAIN, RETRAIN, O2UNet, centre_losses, cyclic_lr, keep_lowest
from baselines.selection import precision_recall, small_loss_positions
from curvebench.config import compose_config
from curvebench.engine.context import CleanLabels
from curvebench.engine.data import Batch
from curvebench.engine.method import Phase
from curvebench.engine.records import read_record
from curvebench.errors import ConfigError
from curvebench.run import run_planned
from curvebench.suites import plan_suite
from tests.helpers import assert_same_result, cli, resumed_run


def softplus(a: float) -> float:
    """CE of a 2-class sample with logits (a, 0) and label 0: log(1 + e^-a)."""
    return math.log1p(math.exp(-a))


# ---------------------------------------------------------------------------------------------
# Co-teaching
# ---------------------------------------------------------------------------------------------
def test_keep_rate_ramp_by_hand():
    # R(T) = 1 - min(T / T_k, 1) * tau with tau = 0.4, T_k = 10, T the 0-based epoch
    assert keep_rate(0, 0.4, 10) == 1.0                     # 1 - 0
    assert keep_rate(1, 0.4, 10) == pytest.approx(0.96)     # 1 - 0.1 * 0.4
    assert keep_rate(5, 0.4, 10) == pytest.approx(0.80)     # 1 - 0.5 * 0.4
    assert keep_rate(9, 0.4, 10) == pytest.approx(0.64)     # 1 - 0.9 * 0.4
    assert keep_rate(10, 0.4, 10) == pytest.approx(0.60)    # 1 - 1.0 * 0.4: tau reached at T = T_k
    assert keep_rate(150, 0.4, 10) == pytest.approx(0.60)   # stays there
    assert keep_rate(7, 0.0, 10) == 1.0                     # p = 0: every sample is kept
    # keep count int(R * B), at least 1
    assert num_keep(0.6, 128) == 76                         # int(76.8)
    assert num_keep(0.64, 10) == 6                          # int(6.4)
    assert num_keep(1.0, 37) == 37
    assert num_keep(0.6, 1) == 1                            # int(0.6) = 0 -> 1


def test_small_loss_cross_selection_by_hand():
    # 5 samples, 2 classes, label 0; logits (a, 0) give CE = log(1 + e^-a), decreasing in a.
    y = torch.zeros(5, dtype=torch.int64)
    a1 = [3.0, -1.0, 2.0, 0.0, 1.0]   # net 1: ascending CE at positions 0, 2, 4, 3, 1
    a2 = [-2.0, 2.0, 0.0, 3.0, 1.0]   # net 2: ascending CE at positions 3, 1, 4, 2, 0
    logits1 = torch.tensor([[a, 0.0] for a in a1], requires_grad=True)
    logits2 = torch.tensor([[a, 0.0] for a in a2], requires_grad=True)
    loss1, loss2, pick1, pick2 = coteaching_losses(logits1, logits2, y, keep=3)
    assert pick1.tolist() == [0, 2, 4] and pick2.tolist() == [3, 1, 4]
    # net 1 learns from net 2's pick {3, 1, 4}: a1 = 0, -1, 1
    assert loss1.item() == pytest.approx((softplus(0.0) + softplus(-1.0) + softplus(1.0)) / 3)  # 0.773224
    assert loss1.item() == pytest.approx((0.693147 + 1.313262 + 0.313262) / 3, abs=1e-6)
    # net 2 learns from net 1's pick {0, 2, 4}: a2 = -2, 0, 1
    assert loss2.item() == pytest.approx((softplus(-2.0) + softplus(0.0) + softplus(1.0)) / 3)  # 1.044446
    assert loss2.item() == pytest.approx((2.126928 + 0.693147 + 0.313262) / 3, abs=1e-6)
    (loss1 + loss2).backward()
    assert logits1.grad.abs().sum(1).nonzero().flatten().tolist() == [1, 3, 4]
    assert logits2.grad.abs().sum(1).nonzero().flatten().tolist() == [0, 2, 4]


def test_small_loss_ties_go_to_the_lower_position():
    assert small_loss_positions(torch.tensor([1.0, 0.5, 1.0, 0.5, 1.0]), 3).tolist() == [1, 3, 0]


class Lookup(nn.Module):
    """logits = W @ one_hot(x): each sample's logits are a column of W (a tiny network)."""

    def __init__(self, columns: list[float]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([columns, [0.0] * len(columns)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w.t()


class NoHostSync:
    """Fails the test if anything in the block asks the host for a tensor's value."""

    NAMES = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero",
             "__getitem__", "__setitem__")

    def __enter__(self):
        self.saved = {n: torch.Tensor.__dict__.get(n) for n in self.NAMES}

        def forbid(name):
            def raiser(*args, **kwargs):
                raise AssertionError(f"host sync in train_step: Tensor.{name}")
            return raiser

        def no_mask(name):  # indexing with a bool mask has a data-dependent shape: a sync on a GPU
            original = getattr(torch.Tensor, name)

            def index(self, key, *value):
                keys = key if isinstance(key, tuple) else (key,)
                if any(isinstance(k, torch.Tensor) and k.dtype == torch.bool for k in keys):
                    raise AssertionError(f"host sync in train_step: Tensor.{name} with a bool mask")
                return original(self, key, *value)
            return index

        for n in self.NAMES:
            setattr(torch.Tensor, n, no_mask(n) if n.endswith("item__") else forbid(n))
        return self

    def __exit__(self, *exc):
        for n, f in self.saved.items():
            if f is None:
                delattr(torch.Tensor, n)
            else:
                setattr(torch.Tensor, n, f)


def test_coteaching_step_trains_each_net_on_the_peers_pick_without_host_sync():
    # The batch holds training samples 7, 2, 9, 4, 0 of a 10-sample set (batch.index).
    m = CoTeaching.__new__(CoTeaching)
    m.net1, m.net2 = Lookup([3.0, -1.0, 2.0, 0.0, 1.0]), Lookup([-2.0, 2.0, 0.0, 3.0, 1.0])
    m.opt1 = torch.optim.SGD(m.net1.parameters(), lr=0.0)
    m.opt2 = torch.optim.SGD(m.net2.parameters(), lr=0.0)
    m.picked1, m.picked2, m.seen = (torch.zeros(10, dtype=torch.bool) for _ in range(3))
    m.keep = 0.7  # int(0.7 * 5) = 3
    batch = Batch(torch.eye(5), torch.zeros(5, dtype=torch.int64), torch.tensor([7, 2, 9, 4, 0]))
    with NoHostSync():
        out = m.train_step(batch, Phase("train", 1, 5, final=True), 0)
    # net 1 got gradients from positions {1, 3, 4} (net 2's pick), net 2 from {0, 2, 4}
    assert m.net1.w.grad[0].nonzero().flatten().tolist() == [1, 3, 4]
    assert m.net2.w.grad[0].nonzero().flatten().tolist() == [0, 2, 4]
    # selections recorded by training-set index: net 1 picked positions 0, 2, 4 = samples 7, 9, 0
    assert m.picked1.nonzero().flatten().tolist() == [0, 7, 9]
    assert m.picked2.nonzero().flatten().tolist() == [0, 2, 4]   # positions 3, 1, 4 = samples 4, 2, 0
    assert m.seen.nonzero().flatten().tolist() == [0, 2, 4, 7, 9]
    expected = 0.5 * ((softplus(0.0) + softplus(-1.0) + softplus(1.0)) / 3 + (softplus(-2.0) + softplus(0.0)
                                                                               + softplus(1.0)) / 3)
    assert out["loss"].item() == pytest.approx(expected)

    # diagnostics: samples 0..9, the noisy ones are 2 and 9
    noisy = torch.zeros(10, dtype=torch.bool)
    noisy[[2, 9]] = True
    clean = CleanLabels(torch.zeros(10, dtype=torch.int64), noisy)
    d = m.diagnostics(Phase("train", 1, 5, final=True), 0, clean)
    # net 1 picked {0, 7, 9}: 2 clean of 3 -> precision 2/3; clean seen {0, 4, 7}: 2 picked -> recall 2/3
    assert d["precision_net1"] == pytest.approx(2 / 3) and d["recall_net1"] == pytest.approx(2 / 3)
    # net 2 picked {0, 2, 4}: 2 clean of 3; clean seen {0, 4, 7}: 2 picked
    assert d["precision_net2"] == pytest.approx(2 / 3) and d["recall_net2"] == pytest.approx(2 / 3)
    assert d["keep_rate"] == 0.7


def test_precision_recall_by_hand():
    selected = torch.tensor([1, 1, 0, 0, 1, 0], dtype=torch.bool)
    candidates = torch.tensor([1, 1, 1, 1, 1, 0], dtype=torch.bool)
    is_clean = torch.tensor([1, 0, 1, 1, 1, 1], dtype=torch.bool)
    # selected candidates {0, 1, 4}, clean among them {0, 4}: 2/3; clean candidates {0, 2, 3, 4}: 2/4
    assert precision_recall(selected, candidates, is_clean) == {"precision": 2 / 3, "recall": 0.5}
    assert precision_recall(torch.zeros(6, dtype=torch.bool), candidates, is_clean) == {"recall": 0.0}


# ---------------------------------------------------------------------------------------------
# O2U-Net
# ---------------------------------------------------------------------------------------------
def test_o2u_cyclic_lr_by_hand():
    # s = (1 + e mod c) / c, lr = (1 - s) r1 + s r2 with c = 10, r1 = 0.01, r2 = 0.001
    lr = [cyclic_lr(e, 10, 0.01, 0.001) for e in range(30)]
    assert lr[0] == pytest.approx(0.9 * 0.01 + 0.1 * 0.001)     # 0.0091: start of cycle 1
    assert lr[4] == pytest.approx(0.5 * 0.01 + 0.5 * 0.001)     # 0.0055
    assert lr[9] == pytest.approx(0.001)                        # end of cycle 1: r2
    assert lr[10] == pytest.approx(0.0091)                      # restart
    assert lr[13] == pytest.approx(0.6 * 0.01 + 0.4 * 0.001)    # 0.0064
    assert lr[29] == pytest.approx(0.001)
    assert all(lr[e + 1] < lr[e] for e in range(29) if (e + 1) % 10)   # falls linearly within a cycle
    assert lr[:10] == pytest.approx(lr[10:20]) and lr[:10] == pytest.approx(lr[20:])
    assert [cyclic_lr(e, 5, 0.01, 0.001) for e in (0, 2, 4, 5)] == pytest.approx([0.0082, 0.0046, 0.001, 0.0082])
    assert cyclic_lr(3, 1, 0.01, 0.001) == pytest.approx(0.001)  # c = 1 (smoke): always r2


def test_o2u_losses_are_centred_per_epoch_by_hand():
    loss = torch.tensor([1.0, 2.0, 3.0, 10.0])
    seen = torch.tensor([True, True, True, False])
    # mean over the seen samples = (1 + 2 + 3) / 3 = 2; the unseen sample contributes 0
    assert centre_losses(loss, seen).tolist() == [-1.0, 0.0, 1.0, 0.0]


def _o2u_stub(n: int, tau: float) -> O2UNet:
    m = O2UNet.__new__(O2UNet)
    m.tau = tau
    m.epoch_loss, m.epoch_seen = torch.zeros(n), torch.zeros(n, dtype=torch.bool)
    m.score_sum, m.score_count = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.int64)
    m.kept = torch.ones(n, dtype=torch.bool)
    m.opt_cyc = SimpleNamespace(param_groups=[{"lr": 0.005}])
    return m


def test_o2u_records_losses_and_averages_the_centred_ones_by_hand():
    m = _o2u_stub(4, 0.25)
    m.model = Lookup([0.0, 1.0, -1.0, 2.0])
    m.opt_pre = m.opt_cyc = torch.optim.SGD(m.model.parameters(), lr=0.0)
    phase = Phase(CYCLIC, 2, 2)
    # epoch 0: two batches see every sample; the recorded losses are those of the forward pass
    m.epoch_loss.zero_(), m.epoch_seen.zero_()
    with NoHostSync():
        m.train_step(Batch(torch.eye(4)[[2, 0]], torch.zeros(2, dtype=torch.int64), torch.tensor([2, 0])), phase, 0)
        m.train_step(Batch(torch.eye(4)[[1, 3]], torch.zeros(2, dtype=torch.int64), torch.tensor([1, 3])), phase, 0)
    ce = [softplus(0.0), softplus(1.0), softplus(-1.0), softplus(2.0)]
    assert m.epoch_loss.tolist() == pytest.approx(ce)
    m.on_epoch_end(phase, 0)
    mean0 = sum(ce) / 4
    assert m.score_sum.tolist() == pytest.approx([c - mean0 for c in ce])
    # epoch 1: doctored record in which sample 3 was not seen
    m.epoch_loss.copy_(torch.tensor([4.0, 1.0, 1.0, 0.0]))
    m.epoch_seen.copy_(torch.tensor([True, True, True, False]))
    m.on_epoch_end(phase, 1)  # mean over the seen = 2 -> centred (2, -1, -1, 0)
    assert m.score_count.tolist() == [2, 2, 2, 1]
    expected = [(ce[0] - mean0 + 2) / 2, (ce[1] - mean0 - 1) / 2, (ce[2] - mean0 - 1) / 2, ce[3] - mean0]
    assert m.score().tolist() == pytest.approx(expected)


def test_o2u_drops_the_top_tau_fraction_by_hand():
    score = torch.tensor([0.5, -1.0, 2.0, 0.1, 3.0, -0.2, 0.0, 1.0, -3.0, 0.7])
    # tau = 0.3: keep int(0.7 * 10) = 7, drop the 3 highest: 3.0 (pos 4), 2.0 (pos 2), 1.0 (pos 7)
    assert (~keep_lowest(score, 0.3)).nonzero().flatten().tolist() == [2, 4, 7]
    # tau = 0.25: keep int(7.5) = 7 as well
    assert (~keep_lowest(score, 0.25)).nonzero().flatten().tolist() == [2, 4, 7]
    # tau = 0.1: drop only the highest
    assert (~keep_lowest(score, 0.1)).nonzero().flatten().tolist() == [4]
    assert keep_lowest(score, 0.0).all()
    # ties: the lower position is kept
    assert keep_lowest(torch.ones(4), 0.5).tolist() == [True, True, False, False]


def test_o2u_diagnostics_and_retrain_subset():
    m = _o2u_stub(6, 1 / 3)
    m.score_sum = torch.tensor([0.1, 2.0, -0.5, 1.5, 0.0, -1.0], dtype=torch.float64)
    m.score_count = torch.ones(6, dtype=torch.int64)
    noisy = torch.tensor([False, True, False, False, True, False])
    clean = CleanLabels(torch.zeros(6, dtype=torch.int64), noisy)
    # keep int(2/3 * 6) = 4 lowest: positions 5, 2, 4, 0 (drop 1 and 3)
    d = m.diagnostics(Phase(CYCLIC, 1, 2), 0, clean)
    # kept {0, 2, 4, 5}: clean {0, 2, 5} -> precision 3/4; clean samples {0, 2, 3, 5}: 3 kept -> 3/4
    assert d == pytest.approx({"precision": 0.75, "recall": 0.75, "kept_fraction": 4 / 6})
    m.ctx = SimpleNamespace()
    m.cfg = OmegaConf.create({"retrain_init": "scratch"})
    m.on_phase_start(Phase(RETRAIN, 1, 2, final=True))
    assert m.train_subset(Phase(RETRAIN, 1, 2, final=True)).tolist() == [0, 2, 4, 5]
    assert m.train_subset(Phase(PRETRAIN, 1, 2)) is None
    assert m.diagnostics(Phase(RETRAIN, 1, 2, final=True), 0, clean) == d
    assert m.diagnostics(Phase(PRETRAIN, 1, 2), 0, clean) == {}


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["coteaching", "o2u"])
@pytest.mark.parametrize("overrides, message", [
    (["method.forget_rate=1.0"], "method.forget_rate must be in [0, 1)"),
    (["method.forget_rate=-0.1"], "method.forget_rate must be in [0, 1)"),
])
def test_forget_rate_outside_0_1_is_a_config_error(method, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        compose_config(["experiment=digits", f"method={method}", *overrides])


def test_forget_rate_defaults_to_the_nominal_noise_rate_and_can_be_overridden():
    from baselines.selection import forget_rate

    assert forget_rate(compose_config(["method=coteaching", "split.noise_rate=0.4"])) == 0.4
    assert forget_rate(compose_config(["method=o2u", "split.noise_rate=0.4", "method.forget_rate=0.2"])) == 0.2


@pytest.mark.parametrize("override, message", [
    ("method.cycle_length=0", "method.cycle_length must be an integer >= 1"),
    ("method.retrain_init=warm", "method.retrain_init must be one of scratch, pretrained"),
    ("method.lr_min=0.1", "0 < method.lr_min <= method.lr_max"),
])
def test_bad_o2u_settings_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        compose_config(["method=o2u", override])


def test_bad_forget_rate_from_the_cli_is_a_clear_error(workdirs, capsys):
    assert cli("digits", "method=coteaching", "method.forget_rate=1.5") == 2
    err = capsys.readouterr().err
    assert "method.forget_rate must be in [0, 1)" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# O2U end to end: phases, the retraining subset, and an exact resume of the per-sample state
# ---------------------------------------------------------------------------------------------
O2U_SHORT = ["method=o2u", "seed=1", "split.imbalance_factor=10", "split.noise_rate=0.4", "recipe.epochs=2",
             "method.pretrain_epochs=1", "method.cycle_length=2", "method.num_cycles=1", "train.deterministic=true"]


def test_o2u_runs_three_phases_and_resumes_exactly(workdirs, tmp_path, monkeypatch):
    import numpy as np

    (plan,) = plan_suite("digits", O2U_SHORT)
    assert run_planned(plan) == "done"
    ref = read_record(plan.run_dir / "result.json")
    assert [(p["name"], p["epochs"]) for p in ref["phases"]] == [(PRETRAIN, 1), (CYCLIC, 2), (RETRAIN, 2)]
    n = ref["split"]["num_train"]
    kept_steps = ref["phases"][2]  # the retraining phase trains on the kept samples only
    art = np.load(plan.run_dir / "artifacts.npz")
    assert art["o2u_kept"].sum() == int(0.6 * n)
    last = ref["diagnostics"]["last"]
    assert last["phase"] == RETRAIN and last["kept_fraction"] == pytest.approx(int(0.6 * n) / n)
    assert 0 < last["precision"] <= 1 and 0 < last["recall"] <= 1
    assert kept_steps["epochs"] == 2
    history = json.loads((plan.run_dir / "history.json").read_text())
    batch = int(plan.cfg.recipe.batch_size)
    assert [h["steps"] for h in history] == [-(-n // batch), -(-n // 16), -(-n // 16)] + [-(-int(0.6 * n) // batch)] * 2

    # killed inside the cyclic stage, then at its end (before retraining)
    plan2 = resumed_run(O2U_SHORT, tmp_path / "again", monkeypatch, (2, 1))
    again = assert_same_result(plan2.run_dir, ref)
    assert again["diagnostics"] == ref["diagnostics"]
    art2 = np.load(plan2.run_dir / "artifacts.npz")
    assert np.array_equal(art["o2u_score"], art2["o2u_score"]) and np.array_equal(art["o2u_kept"], art2["o2u_kept"])


def test_o2u_retrain_init_pretrained_restores_the_weights_after_pretraining():
    m = _o2u_stub(3, 0.0)
    m.cfg = OmegaConf.create({"retrain_init": "pretrained"})
    m.model, m.final_model, m.pretrained = Lookup([1.0, 2.0, 3.0]), Lookup([0.0, 0.0, 0.0]), Lookup([9.0, 9.0, 9.0])
    m.on_phase_start(Phase(CYCLIC, 1, 2))                 # end of pre-training: snapshot
    with torch.no_grad():
        m.model.w.add_(5.0)                               # the cyclic stage changes the model
    m.on_phase_start(Phase(RETRAIN, 1, 2, final=True))
    assert m.final_model.w[0].tolist() == [1.0, 2.0, 3.0]  # the weights after stage 1, not after stage 2
    m.cfg = OmegaConf.create({"retrain_init": "scratch"})
    m.final_model = Lookup([0.5, 0.5, 0.5])
    m.on_phase_start(Phase(RETRAIN, 1, 2, final=True))
    assert m.final_model.w[0].tolist() == [0.5, 0.5, 0.5]  # fresh init built in setup, untouched
