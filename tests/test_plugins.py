"""Methods and datasets from outside the harness (curvebench/plugins.py, docs/ARCHITECTURE.md).

The worked example tests/plugin_example must be installed for the first group of tests
(``pip install --no-deps --no-build-isolation -e tests/plugin_example``; .ci/run does, and sets
CURVEBENCH_REQUIRE_PLUGIN=1 so that they fail there instead of skipping). The loading rules (a
broken plugin stops every command with one line naming it) are tested with throw-away
distributions written into tmp_path, installed or not.
"""

from __future__ import annotations

import os
import textwrap
from importlib.metadata import PackageNotFoundError, distribution

import pytest
import torch
import torch.nn.functional as F

from curvebench import methods, plugins
from curvebench.cli import main
from curvebench.config import compose_config
from curvebench.data import DATASETS, datasets, load_dataset
from curvebench.engine.method import METHODS
from curvebench.errors import ConfigError
from curvebench.methods import builtin_methods, plugin_methods
from curvebench.suites import plan_suite
from tests.helpers import cli, records

EXAMPLE = "curvebench-plugin-example"


def _installed(name: str) -> bool:
    try:
        distribution(name)
    except PackageNotFoundError:
        return False
    return True


needs_example = pytest.mark.skipif(
    not _installed(EXAMPLE) and not os.environ.get("CURVEBENCH_REQUIRE_PLUGIN"),  # CI sets it: fail, never skip
    reason="needs the example plugin: pip install --no-deps --no-build-isolation -e tests/plugin_example")


# -- the worked example, installed ---------------------------------------------------------------
@needs_example
def test_example_is_listed(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    lines = {line.split(":", 1)[0]: line.split(":", 1)[1].split() for line in out.splitlines() if ":" in line}
    assert "label_smoothing" in lines["methods"] and "stripes" in lines["datasets"]
    assert f"plugin {EXAMPLE}: methods label_smoothing; datasets stripes" in out
    assert plugin_methods() == {"label_smoothing": EXAMPLE} and "label_smoothing" not in builtin_methods()


@needs_example
def test_example_configs_compose_from_the_plugin_package():
    cfg = compose_config(["method=label_smoothing", "dataset=stripes", "model=resnet8"])
    assert dict(cfg.method) == {"name": "label_smoothing", "smoothing": 0.1}
    assert cfg.dataset.name == "stripes" and cfg.dataset.num_classes == 4 and cfg.split.meta_per_class == 5
    with pytest.raises(ConfigError, match=r"method.smoothing must be a number in \[0, 1\), got 1.5"):
        compose_config(["method=label_smoothing", "method.smoothing=1.5"])  # the plugin's check_config ran


@needs_example
def test_label_smoothing_loss_is_the_formula():
    from curvebench_plugin_example.method import label_smoothing_loss

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    target = torch.tensor([0, 1])
    logp = torch.log_softmax(logits, dim=1)
    eps = 0.3
    by_hand = sum((1 - eps) * -logp[i, target[i]] + eps * -logp[i].mean() for i in range(2)) / 2
    assert torch.allclose(label_smoothing_loss(logits, target, eps), by_hand)
    assert torch.allclose(label_smoothing_loss(logits, target, eps), F.cross_entropy(logits, target, label_smoothing=eps))
    assert torch.allclose(label_smoothing_loss(logits, target, 0.0), F.cross_entropy(logits, target))
    assert not torch.allclose(label_smoothing_loss(logits, target, eps), F.cross_entropy(logits, target))


@needs_example
def test_smoke_suites_run_plugins_and_published_suites_do_not():
    """`method: [all]` (smoke) adds the plugin's method; `[builtin]` (the published suites) never does."""
    builtin = set(builtin_methods())
    assert {r.config["method"]["name"] for r in plan_suite("smoke")} == builtin | {"label_smoothing"}
    assert {r.config["method"]["name"] for r in plan_suite("fmnist_smoke")} == builtin | {"label_smoothing"}
    for published in ("digits", "fmnist", "cifar10", "cifar100", "ablation"):
        assert {r.config["method"]["name"] for r in plan_suite(published, ["seed=1"])} == builtin, published


@needs_example
def test_example_method_trains_in_the_smoke_suite(workdirs):
    assert cli("smoke", "method=label_smoothing") == 0
    (rec,) = records(workdirs["results"])
    assert rec["method"] == "label_smoothing" and rec["status"] == "done"
    assert rec["config"]["method"]["smoothing"] == 0.1 and len(rec["metrics"]["top1_per_epoch"]) == 1


@needs_example
def test_example_dataset_is_deterministic_and_trains(workdirs, tmp_path):
    cfg = compose_config(["dataset=stripes"]).dataset
    a, b = load_dataset(cfg, tmp_path), load_dataset(cfg, tmp_path)
    assert a.train_images.shape == (160, 16, 16, 3) and a.test_images.shape == (40, 16, 16, 3)
    assert a.fingerprint == b.fingerprint and (a.train_images == b.train_images).all() and not a.official
    assert torch.bincount(torch.as_tensor(a.train_labels)).tolist() == [40] * 4
    other = load_dataset(compose_config(["dataset=stripes", "dataset.seed=1"]).dataset, tmp_path)
    assert other.fingerprint != a.fingerprint  # the fingerprint is of the data, so of the seed too
    assert cli("smoke", "method=label_smoothing", "dataset=stripes") == 0
    (rec,) = records(workdirs["results"])
    assert rec["status"] == "done" and rec["config"]["dataset"]["name"] == "stripes"
    assert rec["split"]["official"] is False


# -- loading rules, with throw-away distributions ------------------------------------------------
@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """Write a distribution (metadata, entry points, files) into tmp_path and put it on sys.path;
    plugin discovery starts from scratch and the registries are restored afterwards."""
    methods.load_all_methods()  # the built-in modules register now, into the registry that is kept
    datasets.load_dataset_plugins()
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    monkeypatch.setattr(DATASETS, "_items", dict(DATASETS._items))
    monkeypatch.setattr(methods, "_loaded", False)
    monkeypatch.setattr(methods, "_plugin_methods", methods._plugin_methods)  # rebound by loading: restored
    monkeypatch.setattr(datasets, "_plugins_loaded", False)
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, entry_points: str, files: dict[str, str] | None = None) -> None:
        info = tmp_path / f"{name.replace('-', '_')}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
        for rel, text in (files or {}).items():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text(textwrap.dedent(text))
        plugins.plugin_entry_points.cache_clear()
        plugins.plugin_conf_dirs.cache_clear()

    yield write
    plugins.plugin_entry_points.cache_clear()
    plugins.plugin_conf_dirs.cache_clear()


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_broken_method_plugin_stops_every_command_with_one_line(fake_dist, workdirs, capsys):
    fake_dist("broken-plugin", """
        [curvebench.methods]
        ghost = no_such_module_for_curvebench
        """)
    for argv in (["list"], ["smoke", "--dry-run"], ["digits", "method=ce", "--dry-run"]):
        assert main(argv) == 2, argv
        line = _one_line(capsys.readouterr().err)
        assert line.startswith("curvebench: error: plugin 'broken-plugin', entry point "
                               "ghost = no_such_module_for_curvebench (group curvebench.methods): import failed: "
                               "ModuleNotFoundError"), line
        assert line.endswith("`pip uninstall broken-plugin`"), line
    assert not list(workdirs["results"].iterdir())


def test_a_plugin_that_registers_nothing_under_its_name_is_an_error(fake_dist, capsys):
    fake_dist("quiet-plugin", """
        [curvebench.methods]
        quiet = quiet_plugin_module
        """, {"quiet_plugin_module.py": "X = 1\n"})
    assert main(["list"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "'quiet-plugin'" in line and "registered no method named 'quiet'" in line
    assert "the entry point's name must be the registry name" in line


def test_a_plugin_may_not_reuse_a_builtin_name(fake_dist, capsys):
    fake_dist("clash-plugin", """
        [curvebench.methods]
        ce = clash_plugin_module
        """, {"clash_plugin_module.py": """
        from curvebench.engine.method import Method, register_method


        @register_method("ce")
        class OtherCE(Method):
            \"\"\"Not the built-in CE.\"\"\"
        """})
    assert main(["list"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "'clash-plugin'" in line and "method 'ce' is registered twice" in line


def test_a_plugin_config_may_not_shadow_a_builtin_one(fake_dist, capsys):
    """Hydra reads the first file on its search path; a plugin's digits suite or ce.yaml would be
    ignored silently, so it is refused: a plugin cannot change what a built-in config says."""
    fake_dist("shadow-plugin", """
        [curvebench.conf]
        shadow = shadow_plugin_conf
        """, {"shadow_plugin_conf/__init__.py": "", "shadow_plugin_conf/experiment/digits.yaml": "suite: {}\n"})
    assert main(["list"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "'shadow-plugin'" in line and "its config experiment/digits.yaml is already provided by curvebench" in line


def test_a_broken_dataset_plugin_is_one_line(fake_dist, tmp_path, capsys):
    fake_dist("broken-data-plugin", """
        [curvebench.datasets]
        nothing = no_such_dataset_module_for_curvebench
        """)
    with pytest.raises(ConfigError, match=r"plugin 'broken-data-plugin', entry point nothing = "
                                          r"no_such_dataset_module_for_curvebench \(group curvebench.datasets\)"):
        load_dataset({"name": "digits"}, tmp_path)
    assert main(["list"]) == 2
    assert "broken-data-plugin" in _one_line(capsys.readouterr().err)


def test_a_working_plugin_from_files_is_planned_by_smoke_only(fake_dist, workdirs):
    """The whole path without pip: a method module, its YAML on the search path, [all] vs [builtin]."""
    fake_dist("tiny-plugin", """
        [curvebench.methods]
        tiny_ce = tiny_plugin.method

        [curvebench.conf]
        tiny = tiny_plugin.conf
        """, {"tiny_plugin/__init__.py": "",
              "tiny_plugin/method.py": """
        from curvebench.engine.method import Method, register_method


        @register_method("tiny_ce")
        class TinyCE(Method):
            \"\"\"CE under another name.\"\"\"
        """,
              "tiny_plugin/conf/__init__.py": "",
              "tiny_plugin/conf/method/tiny_ce.yaml": "name: tiny_ce\n"})
    smoke = {r.config["method"]["name"] for r in plan_suite("smoke")}
    assert "tiny_ce" in smoke and plugin_methods()["tiny_ce"] == "tiny-plugin"
    digits = {r.config["method"]["name"] for r in plan_suite("digits", ["seed=1"])}
    assert "tiny_ce" not in digits and digits == set(builtin_methods())
    (run,) = plan_suite("digits", ["method=tiny_ce", "seed=1", "split.imbalance_factor=10", "split.noise_rate=0.4"])
    assert run.config["method"] == {"name": "tiny_ce"}  # named on the command line, a published suite runs it

