"""Latency budgets: the per-layer latency table (interpolation, cache, fit), the latency cost model behind the
searchers' FLOPs interface, the settings, and ``--latency 0.5`` end to end.

The machine running these tests is shared and loaded, so nothing here asserts a speed: the tests check the
mechanism (what is predicted, cached, budgeted, measured and stated), never how fast anything ran.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agents import SEARCHERS, SearchContext, fill_budget, project_to_budget, uniform_architecture
from automl_prune.cli import main
from automl_prune.config import SearchConfig, load_config_file
from automl_prune.cost import latency as latency_mod
from automl_prune.cost.latency import LatencyCostModel, LatencyTable, latency_budget, latency_table
from automl_prune.cost.timing import compare_latency
from automl_prune.errors import BudgetError, ConfigError
from automl_prune.models import build_model
from search_spaces import Budget, SearchSpace

TINY = ["--dataset", "synthetic", "--pretrain-epochs", "1", "--no-progress", "--workers", "0"]


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, SearchSpace]:
    model = build_model("tiny-resnet", 1, 10).eval()
    return model, SearchSpace.from_model(model, torch.zeros(1, 1, 16, 16))


def _bilinear_table(space: SearchSpace, coef: tuple[float, float, float, float]) -> LatencyTable:
    """A table (no timing) whose every layer takes ``a + b cin + c cout + d cin cout`` ns: bilinear, so exactly
    what bilinear interpolation reproduces between grid points."""
    a, b, c, d = coef
    cost = space.flops_model
    full_in, full_out = cost.layer_widths({})
    low_in, low_out = cost.layer_widths(space.smallest().widths)
    layers, gin, gout, times, positions = [], [], [], [], []
    for row, name in enumerate(cost.layer_names):
        info = space.graph.layers[name]
        if info.kind not in ("conv", "linear"):
            continue
        ins = sorted({int(low_in[row]), int(full_in[row]), (int(low_in[row]) + int(full_in[row])) // 2})
        outs = sorted({int(low_out[row]), int(full_out[row])})
        layers.append(name)
        gin.append(ins)
        gout.append(outs)
        times.append([[a + b * i + c * o + d * i * o for o in outs] for i in ins])
        positions.append(info.positions)
    return LatencyTable(layers, gin, gout, times, positions, batch_size=4, threads=1, device="test",
                        alpha=2.0, beta_ns=0.5, constant_ns=1000.0)


def test_prediction_interpolates_bilinearly_and_adds_the_fitted_terms(tiny) -> None:
    _, space = tiny
    coef = (100.0, 3.0, 5.0, 0.25)
    table = _bilinear_table(space, coef)
    lat = space.with_width_cost(LatencyCostModel(space.graph, table))
    rows = [space.flops_model.layer_names.index(n) for n in table.layers]
    rng = np.random.default_rng(0)
    for _ in range(20):
        arch = space.sample(rng)
        cin, cout = (w[rows].astype(float) for w in space.flops_model.layer_widths(arch.widths))
        expected = (2.0 * (coef[0] + coef[1] * cin + coef[2] * cout + coef[3] * cin * cout).sum()
                    + 0.5 * (cout * np.array(table.positions) * 4).sum() + 1000.0)
        # every layer's share is rounded to whole nanoseconds
        assert abs(lat.flops(arch) - expected) <= len(lat.cost_model.layer_names)
        assert table.predict_ns(cin, cout) == pytest.approx(expected)
        kept = torch.tensor([float(arch.widths[n]) for n in lat.cost_model.group_names], dtype=torch.float64)
        assert float(lat.cost_model.differentiable_flops(kept)) == pytest.approx(expected)


def test_latency_space_keeps_true_costs_and_serves_every_budget_helper(tiny) -> None:
    _, space = tiny
    lat = space.with_width_cost(LatencyCostModel(space.graph, _bilinear_table(space, (50.0, 1.0, 2.0, 0.5))))
    assert lat.width_cost_unit == "ns" and space.width_cost_unit == "FLOPs"
    arch = space.sample(np.random.default_rng(1))
    assert lat.true_costs(arch) == space.costs(arch) == space.true_costs(arch)
    assert lat.costs(arch).params == space.costs(arch).params and lat.full_flops == lat.cost_model.full.flops
    assert lat.flops(arch) != space.flops(arch)  # the searchers see latency, not FLOPs
    assert lat.bops(arch) == space.bops(arch) and lat.size_bits(arch) == space.size_bits(arch)
    budget = latency_budget(lat, 0.6)
    assert budget == int(0.6 * lat.full_flops)
    uniform = uniform_architecture(lat, budget)
    assert lat.flops(uniform) <= budget
    projected = project_to_budget(lat, lat.full(), budget, fill=True)
    assert lat.flops(projected) <= budget
    assert lat.flops(fill_budget(lat, lat.smallest().widths, budget)) <= budget
    kept = torch.tensor([float(w) for w in uniform.widths.values()], dtype=torch.float64, requires_grad=True)
    lat.cost_model.differentiable_flops(kept).backward()
    assert kept.grad is not None and torch.isfinite(kept.grad).all()


def test_latency_budget_is_checked(tiny) -> None:
    _, space = tiny
    lat = space.with_width_cost(LatencyCostModel(space.graph, _bilinear_table(space, (50.0, 1.0, 2.0, 0.5))))
    for bad in (0.0, 1.5):
        with pytest.raises(BudgetError, match="fraction in"):
            latency_budget(lat, bad)
    floor = lat.min_flops / lat.full_flops
    with pytest.raises(BudgetError, match="below what this search space can reach"):
        latency_budget(lat, floor * 0.9)


def test_a_searcher_keeps_every_candidate_within_the_latency_budget(tiny) -> None:
    _, space = tiny
    lat = space.with_width_cost(LatencyCostModel(space.graph, _bilinear_table(space, (50.0, 1.0, 2.0, 0.5))))
    budget = latency_budget(lat, 0.7)

    class Scored(dict):
        def to_dict(self) -> dict:
            return dict(self)

    class Scorer:  # a stand-in evaluator: accuracy grows with width
        def evaluate(self, arch):
            return Scored(accuracy=sum(arch.widths.values()) / 100.0, flops=lat.flops(arch),
                          flops_ratio=lat.flops(arch) / lat.full_flops)

    searcher = SEARCHERS.create("random", SearchContext(lat, Scorer(), Budget.from_fractions(lat, latency=0.7), seed=0))
    result = searcher.search(6)
    assert len(result.history) == 6
    assert all(lat.flops(e.architecture) <= budget for e in result.history)
    assert lat.flops(result.best) <= budget


def test_table_is_measured_once_and_cached_atomically(tiny, tmp_path, monkeypatch) -> None:
    model, space = tiny
    choices = {d.name: d.choices() for d in space.decisions}
    settings = {"grid_points": 3, "repeats": 2, "min_seconds": 2e-4, "calibration": 4, "calibration_rounds": 3}
    table, path = latency_table(model, space.graph, choices, tmp_path, batch_size=2, **settings)
    assert path.parent == tmp_path / "latency" and path.is_file()
    assert not list(path.parent.glob("*.tmp"))
    assert table.layers == [n for n in space.flops_model.layer_names
                            if space.graph.layers[n].kind in ("conv", "linear")]
    assert all(len(g) <= 3 for g in table.in_grid + table.out_grid)
    assert all(t > 0 for layer in table.times_ns for line in layer for t in line)
    assert table.batch_size == 2 and table.threads == torch.get_num_threads()
    assert table.meta["fit"]["points"] == 4 and table.alpha >= 0 and table.constant_ns >= 0

    def no_measuring(*_args, **_kwargs):
        raise AssertionError("the cached table was measured again")

    monkeypatch.setattr(latency_mod.LatencyTable, "measure", no_measuring)
    again, again_path = latency_table(model, space.graph, choices, tmp_path, batch_size=2, **settings)
    assert again_path == path and again.to_dict() == table.to_dict()
    # Every setting is in the key with its default, so naming a default explicitly is the same table.
    default_seed, _ = latency_table(model, space.graph, choices, tmp_path, batch_size=2, seed=0, **settings)
    assert default_seed.to_dict() == table.to_dict()
    with pytest.raises(AssertionError, match="measured again"):  # another batch size is another table
        latency_table(model, space.graph, choices, tmp_path, batch_size=3, **settings)
    # The cached table prices the space (which of the narrowest and the full model measures faster is timing
    # noise on a table this small: a 2-core CI run once measured the narrowest 0.5% slower).
    lat = space.with_width_cost(LatencyCostModel(space.graph, again))
    assert lat.min_flops > 0 and lat.full_flops > 0


def test_compare_latency_states_median_quartiles_and_minimum() -> None:
    fast, slow = torch.nn.Linear(4, 4), torch.nn.Sequential(torch.nn.Linear(4, 512), torch.nn.Linear(512, 4))
    fast.train()
    result = compare_latency({"fast": fast, "slow": slow}, (4,), [1, 3], rounds=3, min_seconds=1e-4)
    assert set(result) == {1, 3}
    for stats in (result[1]["fast"], result[3]["slow"]):
        assert stats["samples"] == 3
        assert stats["min_ms"] <= stats["q1_ms"] <= stats["median_ms"] <= stats["q3_ms"]
        assert stats["iqr_ms"] == pytest.approx(stats["q3_ms"] - stats["q1_ms"])
    assert fast.training  # restored


def test_latency_settings_are_validated() -> None:
    assert SearchConfig(latency=0.5, flops=1.0).latency == 0.5
    assert SearchConfig().latency_batch_size == 1
    for bad in ({"latency": 0.0, "flops": 1.0}, {"latency": 1.5, "flops": 1.0}, {"latency": 0.5, "flops": 0.5},
                {"latency": 0.5, "flops": 1.0, "search": "bits"}, {"latency_batch_size": 0}):
        with pytest.raises(ConfigError):
            SearchConfig(**bad)
    assert SearchConfig(latency=0.5, flops=1.0, size="0.25").resolved_search == "both"


def test_latency_in_yaml_is_a_float(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("latency: 0.5\nlatency_batch_size: 8\n")
    assert load_config_file(path) == {"latency": 0.5, "latency_batch_size": 8}


@pytest.mark.parametrize("value", ["0", "1.5"])
def test_invalid_latency_is_one_line_and_writes_nothing(value, capsys, tmp_path) -> None:
    out = tmp_path / "run"
    code = main(["search", "--model", "tiny-cnn", *TINY, "--cache-dir", str(tmp_path / "cache"), "--latency", value,
                 "--out", str(out)])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert "`latency`" in lines[0] and value in lines[0]
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_latency_and_flops_budgets_together_are_refused(capsys, tmp_path) -> None:
    code = main(["search", "--model", "tiny-cnn", *TINY, "--latency", "0.5", "--flops", "0.5",
                 "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")])
    assert code == 2 and "not both" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_latency_budget_end_to_end(capsys, tmp_path) -> None:
    """``--latency 0.8``: the run finishes, the search budgets predicted latency, the final model is measured
    against the base (batch 1 and the configured batch), and the summary and arch.json state it all.

    0.8, not 0.5: a forward pass has a constant part the widths do not shrink, and on a loaded machine the
    fitted constant of tiny-resnet put even the narrowest architecture at 0.52 of full (refused, rightly)."""
    run, cache = tmp_path / "run", tmp_path / "cache"
    code = main(["search", "--model", "tiny-resnet", *TINY, "--cache-dir", str(cache), "--agent", "random",
                 "--episodes", "3", "--latency", "0.8", "--latency-batch-size", "64", "--finetune-epochs", "0.2",
                 "--out", str(run)])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert "us of predicted latency (0.8 of" in err
    summary = json.loads((run / "summary.json").read_text())
    lat = summary["latency"]
    assert lat["budget"] == 0.8 and lat["batch_size"] == 64 and lat["threads"] >= 1 and lat["device"]
    assert set(lat["measured_ms"]) == {"1", "64"}
    for batch in ("1", "64"):
        for which in ("base", "compressed"):
            stats = lat["measured_ms"][batch][which]
            assert stats["samples"] == 21 and 0 < stats["min_ms"] <= stats["median_ms"]
    base, comp = lat["measured_ms"]["64"]["base"], lat["measured_ms"]["64"]["compressed"]
    assert lat["budget_ms"] == pytest.approx(0.8 * base["median_ms"])
    assert lat["noise_ms"] == pytest.approx(0.5 * comp["iqr_ms"] + 0.4 * base["iqr_ms"])
    assert lat["met"] == (comp["median_ms"] <= lat["budget_ms"])
    assert lat["met_within_noise"] == (comp["median_ms"] <= lat["budget_ms"] + lat["noise_ms"])
    # the search's guarantee is on the prediction: the chosen architecture is predicted within the budget
    assert lat["predicted_ms"]["compressed"] <= lat["predicted_ms"]["budget"] <= 0.8 * lat["predicted_ms"]["base"]
    assert Path(lat["table"]["file"]).parent == cache / "latency"
    # FLOPs in the summary are FLOPs, not the predicted nanoseconds the search budgeted
    space = SearchSpace.from_model(build_model("tiny-resnet", 1, 10), torch.zeros(1, 1, 16, 16))
    assert summary["base"]["flops"] == space.full_flops
    assert summary["compressed"]["flops"] == space.flops(summary["architecture"])
    arch = json.loads((run / "best" / "arch.json").read_text())
    assert arch["latency"] == lat and arch["base_flops"] == space.full_flops
    assert "latency budget (0.8, batch 64)" in (run / "summary.md").read_text()
    # the report plots and states the budget the search worked to: predicted latency, not FLOPs
    report = (run / "report.md").read_text()
    assert "latency \u2264 0.8 of the base model's at batch 64" in report and "FLOPs \u2264" not in report
    config = json.loads((run / "config.json").read_text())
    assert config["latency"] == 0.8 and config["flops"] == 1.0
    # the run keeps its own table: a resume after the cache was cleared reads it instead of measuring again
    assert (run / "latency_table.json").is_file()
    import shutil

    shutil.rmtree(cache / "latency")
    assert main(["resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert "latency table: the run's own" in err and "latency table: timed" not in err


def test_python_api_takes_a_latency_budget_instead_of_flops(monkeypatch, tiny) -> None:
    import automl_prune
    from automl_prune import api

    model, _ = tiny
    monkeypatch.setattr(api, "_search", lambda _model, _train, _val, _test, config, *_task: config)
    data = (torch.zeros(4, 1, 16, 16), torch.zeros(4, dtype=torch.long))
    config = automl_prune.search(model, train=data, val=data, latency=0.5, latency_batch_size=8)
    assert (config.latency, config.latency_batch_size, config.flops) == (0.5, 8, 1.0)
    assert automl_prune.search(model, train=data, val=data).flops == 0.5
    with pytest.raises(ConfigError, match="not both"):
        automl_prune.search(model, train=data, val=data, latency=0.5, flops=0.5)
