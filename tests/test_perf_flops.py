"""FLOPs per image of the plain and meta steps (exact, deterministic; the CI proxy for the cost of
the meta step, PERFORMANCE.md §9.9). No timing here."""

from __future__ import annotations

import pytest

from curvebench.perf.flops import model_step_flops

# torch.utils.flop_counter counts, FLOPs per image (batch-independent), pinned exactly.
# The registered CE and CurveNet steps; "virtual"/"real" include CurveNet's weighting net (157,312
# FLOPs per image).
RESNET32 = {
    "plain": {"step": 412_290_816},
    "SL0": {"virtual": 412_448_128, "meta_forward": 137_725_184, "meta_backward": 827_603_712, "real": 412_448_128},
    "SL1": {"virtual": 406_844_800, "meta_forward": 137_725_184, "meta_backward": 810_793_728, "real": 412_448_128},
    "SL2": {"virtual": 314_832_256, "meta_forward": 137_725_184, "meta_backward": 532_921_088, "real": 412_448_128},
    "SL3": {"virtual": 225_179_008, "meta_forward": 137_725_184, "meta_backward": 262_126_336, "real": 412_448_128},
}
WRN16_8 = {
    "plain": {"step": 9_287_989_248},
    "SL0": {"virtual": 9_288_146_560, "meta_forward": 3_096_291_328, "meta_backward": 18_910_856_960,
            "real": 9_288_146_560},
    "SL3": {"virtual": 5_243_952_768, "meta_forward": 3_096_291_328, "meta_backward": 6_610_503_424,
            "real": 9_288_146_560},
}
# the independent figures of PERFORMANCE.md §9.3 (GFLOP per image)
RESEARCH_RESNET32 = {"plain": 0.412, "SL0": 1.790, "SL1": 1.767, "SL2": 1.397, "SL3": 1.037}
RESEARCH_RATIOS = {"SL0": 4.34, "SL1": 4.29, "SL2": 3.39, "SL3": 2.52}
RESEARCH_WRN = {"plain": 9.29, "SL0": 40.6, "SL3": 24.2}


def _per_image(counts: dict[str, dict[str, float]]) -> dict[str, dict[str, int]]:
    return {k: {p: round(v * 1e9) for p, v in phases.items()} for k, phases in counts.items()}


@pytest.fixture(scope="module")
def resnet32():
    return model_step_flops("resnet32", batch=2, device="cpu")


def test_resnet32_step_flops_are_pinned_exactly(resnet32):
    assert _per_image(resnet32) == RESNET32


def test_resnet32_flops_match_the_research_figures(resnet32):
    total = {k: sum(v.values()) for k, v in resnet32.items()}
    for key, gflop in RESEARCH_RESNET32.items():
        assert total[key] == pytest.approx(gflop, rel=0.01), key
    for key, ratio in RESEARCH_RATIOS.items():
        assert total[key] / total["plain"] == pytest.approx(ratio, abs=0.01), key
    mb = {k: resnet32[k]["meta_backward"] for k in ("SL0", "SL3")}
    assert mb["SL0"] / mb["SL3"] == pytest.approx(3.16, abs=0.01)
    assert resnet32["SL0"]["meta_backward"] == pytest.approx(0.827, rel=0.01)
    assert resnet32["SL3"]["meta_backward"] == pytest.approx(0.262, rel=0.01)


def test_meta_step_cost_falls_with_the_slmo_level_and_meets_the_targets(resnet32):
    total = {k: sum(v.values()) for k, v in resnet32.items()}
    assert total["SL0"] > total["SL1"] > total["SL2"] > total["SL3"] > total["plain"]
    for phase in ("virtual", "meta_backward"):
        values = [resnet32[f"SL{s}"][phase] for s in range(4)]
        assert values == sorted(values, reverse=True) and len(set(values)) == 4, phase
    # the parts SLMO does not touch
    assert len({resnet32[f"SL{s}"]["meta_forward"] for s in range(4)}) == 1
    assert len({resnet32[f"SL{s}"]["real"] for s in range(4)}) == 1
    # PERFORMANCE.md §9.8 CPU proxies: meta / plain <= 4.4 at SL0 and <= 2.6 at SL3
    assert total["SL0"] / total["plain"] <= 4.4
    assert total["SL3"] / total["plain"] <= 2.6


def test_wrn16_8_step_flops():
    counts = model_step_flops("wrn16_8", sls=(0, 3), batch=1)  # one image: a few seconds
    assert _per_image(counts) == WRN16_8
    for key, gflop in RESEARCH_WRN.items():
        assert sum(counts[key].values()) == pytest.approx(gflop, rel=0.01), key
