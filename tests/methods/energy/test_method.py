"""Tests of the energy method ("energy", PED): stratified sampling, Ckmeans selection against brute force, removal
of residual and dense units against masked references, the stages (their counts, the target, the schedule, resume)
and the report.

Training runs use resnet20 on the 8x8 digits (2.5M MACs per sample), so a stage takes a few seconds.
"""

from __future__ import annotations

import itertools
import json

import ckwrap
import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from compressor.api import compress
from compressor.cli import main
from compressor.counting import count_macs, count_params
from compressor.data import load_data
from compressor.errors import CompressorError
from compressor.methods import create_method
from compressor.methods.energy import EnergyMethod, ped_kept, removal, remove_units, stratified_indices
from compressor.models import create_model
from compressor.models.densenet import dense_unit
from compressor.models.resnet_cifar import basic_unit, preact_bottleneck_unit
from compressor.modules import copy_model
from compressor.passes.analysis.groups import analyse_channels
from compressor.passes.gates import dense_unit_readers, last_layer
from compressor.report import Report
from compressor.runtime.latency_model import LatencyModel
from compressor.training import TrainConfig
from shared import macs_latency_table, randomize_batchnorm_
from structured_methods import SHAPE, generator, zoo_model


def test_stratified_samples_keep_every_class_share():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    chosen = stratified_indices(labels, 40, generator(0))
    assert len(chosen) == len(set(chosen.tolist())) == 40
    assert torch.bincount(labels[chosen]).tolist() == [20, 12, 8]
    assert torch.equal(stratified_indices(labels, 500, generator(0)), torch.arange(100))


# ================================================================================================= selection


def brute_force_sse(values: np.ndarray, k: int) -> float:
    """The least within-cluster sum of squares over every split of the sorted values into k contiguous runs."""
    ordered = np.sort(values)
    best = np.inf
    for cuts in itertools.combinations(range(1, len(ordered)), k - 1):
        parts = np.split(ordered, cuts)
        best = min(best, sum(((part - part.mean()) ** 2).sum() for part in parts))
    return best


@pytest.mark.parametrize("seed", range(4))
def test_ckmeans_is_optimal_and_its_clusters_contiguous(seed):
    values = np.random.default_rng(seed).normal(size=9)
    for k in range(1, len(values) + 1):
        result = ckwrap.ckmeans(values, k)
        sse = sum(((values[result.labels == c] - values[result.labels == c].mean()) ** 2).sum() for c in range(k))
        assert sse == pytest.approx(brute_force_sse(values, k), abs=1e-9)
        spans = sorted((values[result.labels == c].min(), values[result.labels == c].max()) for c in range(k))
        assert all(low <= high for low, high in spans)
        assert all(spans[i][1] < spans[i + 1][0] for i in range(k - 1)), "clusters overlap"


SCORES = [5.0, 1.0, 5.1, 9.0, 1.2, 8.8, 3.0, 5.05]


@pytest.mark.parametrize("kept", [1, 3, 4, 6, 8])
def test_ped_keeps_one_unit_per_cluster(kept):
    labels = ckwrap.ckmeans(np.array(SCORES), kept).labels
    for keep in ("lowest", "largest", "nearest_center"):
        chosen = ped_kept(SCORES, kept, keep)
        assert len(chosen) == kept
        assert sorted(labels[chosen].tolist()) == list(range(kept)), "one per cluster"
    for index in ped_kept(SCORES, kept, "lowest"):
        assert index == min(np.flatnonzero(labels == labels[index]))
    for index in ped_kept(SCORES, kept, "largest"):
        assert index == max(np.flatnonzero(labels == labels[index]))


def test_ped_keeps_the_member_nearest_its_cluster_center():
    scores = [1.0, 1.5, 1.6, 6.0, 6.1, 7.0]  # clusters centred at 1.367 and 6.367
    assert ped_kept(scores, 2, "nearest_center") == [1, 4]
    assert ped_kept(scores, 2, "lowest") == [0, 3]
    assert ped_kept(scores, 2, "largest") == [2, 5]


def test_ped_caps_the_clusters_at_the_distinct_scores():
    assert ped_kept([2.0, 2.0, 2.0, 7.0], 3) == [0, 3]


def test_the_baselines_remove_as_many_units_and_rank_the_lowest_scores():
    ped = removal("ped", SCORES, 3, "lowest", generator(0))
    rank = removal("rank", SCORES, 3, "lowest", generator(0))
    drawn = removal("random", SCORES, 3, "lowest", generator(0))
    assert len(ped) == len(rank) == len(drawn) == 3
    assert rank == [1, 4, 6]
    assert drawn == removal("random", SCORES, 3, "lowest", generator(0))
    assert set(removal("random", SCORES, 2, "lowest", generator(0))) <= set(drawn)


# ================================================================================== removal of one skip-unit


def without(model: nn.Module, names: list[str]) -> nn.Module:
    removed = copy_model(model)
    remove_units(removed, names, tuple(model.input_shape))
    return removed.eval()


@pytest.mark.parametrize("arch, unit", [
    ("resnet56", "features.stage1.1"),       # basic unit, identity shortcut
    ("resnet56", "features.stage2.0"),       # downsampling, option-A padding shortcut
    ("resnet164", "features.stage1.3"),      # pre-activation bottleneck, identity shortcut
    ("resnet164", "features.stage2.0"),      # pre-activation bottleneck, projection shortcut
    ("wrn16_8", "features.group3.0"),        # projection shortcut, pre-activation shared with the branch
])
def test_a_removed_residual_unit_equals_its_branch_zeroed_and_returns_its_shortcut(arch, unit):
    model = zoo_model(arch)
    reference = copy_model(model)
    layer = last_layer(reference.get_submodule(unit).branch)
    with torch.no_grad():
        layer.weight.zero_()
        if layer.bias is not None:
            layer.bias.zero_()
    removed = without(model, [unit])
    x = torch.randn(6, *SHAPE, generator=generator(3))
    with torch.no_grad():
        assert torch.allclose(removed(x), reference(x), atol=1e-5)
    compiled_unit = removed.get_submodule(unit)
    assert compiled_unit.branch is None
    seen = {}
    compiled_unit.register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out))
    with torch.no_grad():
        removed(x)
        shortcut_input = compiled_unit.preact(seen["x"]) if compiled_unit.shortcut_uses_preact else seen["x"]
        assert torch.equal(seen["out"], compiled_unit.post_activation(compiled_unit.shortcut(shortcut_input)))


@pytest.mark.parametrize("unit, own", [("features.stage1.1", 4_672), ("features.stage2.1", 18_560),
                                       ("features.stage3.1", 73_984)])
def test_removing_a_resnet56_unit_drops_exactly_its_own_parameters(unit, own):
    model = zoo_model("resnet56", (3, 32, 32))
    removed = without(model, [unit])
    assert count_params(model) - count_params(removed) == own
    assert count_macs(removed, (3, 32, 32)) < count_macs(model, (3, 32, 32))
    state, before = removed.state_dict(), model.state_dict()
    assert not [key for key in state if key.startswith(unit + ".branch")]
    assert set(state) < set(before)
    for key, value in state.items():
        assert torch.equal(value, before[key]), f"{key} changed"


def test_a_removed_dense_unit_vanishes_from_every_reader_and_equals_the_masked_reference():
    model = zoo_model("densenet40")
    unit_name = "features.block1.3"
    unit = model.get_submodule(unit_name)
    readers = dense_unit_readers(unit, analyse_channels(model, SHAPE).groups)
    reference = copy_model(model)
    reference.get_submodule(unit_name).new_features.register_forward_hook(lambda m, a, out: torch.zeros_like(out))
    names = {id(module): name for name, module in model.named_modules()}
    with torch.no_grad():
        for norm, start, stop in readers:
            copied = reference.get_submodule(names[id(norm)])
            copied.weight[start:stop] = 0
            copied.bias[start:stop] = 0
    removed = without(model, [unit_name])
    x = torch.randn(6, *SHAPE, generator=generator(4))
    with torch.no_grad():
        assert torch.allclose(removed(x), reference(x), atol=1e-5)
    assert isinstance(removed.get_submodule(unit_name), nn.Identity)
    growth = unit.growth
    assert len(readers) > 1
    for norm, _, _ in readers:
        assert removed.get_submodule(names[id(norm)]).num_features == norm.num_features - growth


# ===================================================================================================== stages


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", SHAPE, batch_size=64, seed=0)


def resnet20():
    torch.manual_seed(0)
    model = create_model("resnet20")
    model.input_shape = SHAPE
    return model


def run(data, epochs: int, target=None, state_path=None, resume=False, **options):
    model, method = resnet20(), create_method("energy", target, "structured", **options)
    method.prepare(model, data)
    result = method.fit(model, data, TrainConfig(epochs=epochs, lr=0.1, seed=0), state_path=state_path,
                        resume=resume, progress=False)
    return model, method.finalize(model) and method, result


UNIT_MACS = 2 * 16 * 16 * 9 * 64  # a resnet20 unit at 8x8 (a downsampling one has fewer): 294,912 MACs


@pytest.fixture(scope="module")
def staged(digits):
    """Three stages of one epoch each, by the default fraction: 9 units → remove 2, then 1, then 1."""
    dense_macs = count_macs(resnet20(), SHAPE)
    model, method, result = run(digits, 1, stages=3)
    return dict(model=model, method=method, result=result, dense_macs=dense_macs,
                state={key: value.clone() for key, value in model.state_dict().items()})


def test_each_stage_removes_its_share_of_the_units_left_and_retrains(staged):
    method, result = staged["method"], staged["result"]
    records = method.pruning_stages
    assert [(r["units_before"], len(r["removed"])) for r in records] == [(9, 2), (7, 1), (6, 1)]
    assert [len(r["dependence"]) for r in records] == [9, 7, 6]
    assert len(result.history) == 3, "the run stops after the last stage's retraining"
    macs = [staged["dense_macs"]] + [r["macs"] for r in records]
    assert macs == sorted(macs, reverse=True) and len(set(macs)) == 4
    assert macs[-1] == count_macs(staged["model"], SHAPE)
    assert all(r["accuracy_after_retraining"] is not None for r in records)
    assert method.removed_units == [name for r in records for name in r["removed"]]
    assert [e["macs_trained"] for e in method.epochs] == [r["macs"] for r in records]
    model = staged["model"]
    assert sum(1 for _, unit in model.named_modules() if getattr(unit, "branch", False) is None) == 4


def test_each_stage_removes_the_units_ped_selects_from_its_scores(staged):
    for record in staged["method"].pruning_stages:
        names, scores = list(record["dependence"]), list(record["dependence"].values())
        expected = [names[i] for i in removal("ped", scores, len(record["removed"]), "lowest", generator(0))]
        assert record["removed"] == expected


def test_resume_across_a_stage_is_bitwise_identical(staged, digits, tmp_path):
    state_path = tmp_path / "state.pt"
    model, method = resnet20(), create_method("energy", None, "structured", stages=3)
    method.prepare(model, digits)
    after_epoch = method.after_epoch

    def interrupt(model, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        after_epoch(model, epoch)

    method.after_epoch = interrupt
    with pytest.raises(KeyboardInterrupt):
        method.fit(model, digits, TrainConfig(epochs=1, lr=0.1, seed=0), state_path=state_path, progress=False)
    torch.manual_seed(123)
    resumed, resumed_method, result = run(digits, 1, state_path=state_path, resume=True, stages=3)
    assert result.resumed_from_epoch == 1
    state = resumed.state_dict()
    assert state.keys() == staged["state"].keys()
    for key, value in staged["state"].items():
        assert torch.equal(state[key], value), key
    assert resumed_method.pruning_stages == staged["method"].pruning_stages


def test_the_learning_rate_restarts_every_stage_and_falls_tenfold_each_quarter():
    method = create_method("energy", None, "structured", stages=2)
    method.stage_epochs = 4
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = method.lr_schedule(optimizer, total_steps=80, steps_per_epoch=10)
    rates = []
    for _ in range(80):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    stage = [0.1] * 10 + [0.01] * 10 + [0.001] * 10 + [0.0001] * 10
    assert rates == pytest.approx(stage + stage)


def test_without_retraining_the_stages_follow_each_other(digits):
    model, method, result = run(digits, 0, stages=2)
    assert [len(r["removed"]) for r in method.pruning_stages] == [2, 1]
    assert all(r["accuracy_after_retraining"] is None for r in method.pruning_stages)
    assert result.history == [] and method.outcome().structure.training_cost == []


def test_the_stage_that_reaches_the_target_removes_the_fewest_units_that_reach_it(digits):
    # The schedule would remove 6 units at once; 30% of the MACs take 3 (a unit is at most 11.6% of them).
    model, method, result = run(digits, 0, target=0.3, schedule="6")
    dense = count_macs(resnet20(), SHAPE)
    removed = 1 - count_macs(model, SHAPE) / dense
    assert len(method.pruning_stages) == 1 and len(method.removed_units) == 3
    assert removed >= 0.3 and removed - UNIT_MACS / dense < 0.3
    assert method.predicted["macs_removed"] == pytest.approx(removed, abs=1e-12)


def test_a_parameter_target_is_reached_and_a_stage_limit_that_stops_short_says_so(digits):
    dense = count_params(resnet20())
    model, method, _ = run(digits, 0, target_params=0.3)
    assert 1 - count_params(model) / dense >= 0.3 and not method.notes
    model, method, _ = run(digits, 0, target=0.6, stages=1)
    assert len(method.pruning_stages) == 1
    assert method.notes == ["the target was not reached: the 1 stages asked for ended"]


def test_compress_reaches_the_target_with_fewer_conv_nodes_and_writes_the_stage_report(tmp_path):
    report = compress(resnet20(), method="energy", target="30%", epochs=1, out=tmp_path / "out", bench_runs=1,
                      progress=False, device="cpu")
    assert report.structure.macs_removed >= 0.3
    stages = report.structure.pruning_stages
    assert [len(stage.removed) for stage in stages] == [2, 1]
    assert report.structure.removed_units == [unit for stage in stages for unit in stage.removed]
    assert [cost.epoch for cost in report.training_cost] == [1, 2]
    convs = sum(node.op_type == "Conv" for node in onnx.load(tmp_path / "out" / "model.onnx").graph.node)
    assert convs == 19 - 2 * 3
    assert report.onnx.max_abs_diff <= report.onnx.tolerance
    assert (tmp_path / "out" / "dependence.png").stat().st_size > 0
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "### Pruning stages" in markdown and "dependence.png" in markdown
    loaded = Report.from_dict(json.loads((tmp_path / "out" / "report.json").read_text()))
    assert loaded.structure.pruning_stages == stages


def test_compress_removes_dense_units_physically(tmp_path):
    torch.manual_seed(0)
    model = create_model("densenet40")
    report = compress(model, method="energy", epochs=0, input_shape=SHAPE, out=tmp_path / "out", bench_runs=1,
                      progress=False, device="cpu", method_options={"stages": 1})
    removed = report.structure.pruning_stages[0].removed
    assert len(removed) == round(0.2 * 36) and report.structure.removed_units == removed
    convs = sum(node.op_type == "Conv" for node in onnx.load(tmp_path / "out" / "model.onnx").graph.node)
    assert convs == 39 - len(removed)
    assert report.onnx.max_abs_diff <= report.onnx.tolerance
    assert report.compressed.params < report.dense.params


class UnitsNet(nn.Module):
    """A model from outside the zoo built from the zoo's unit modules: two basic residual units (one downsampling
    through an option-A shortcut), a pre-activation bottleneck unit with a projection, two dense units, a head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.residual = nn.Sequential(basic_unit(8, 8, 1), basic_unit(8, 16, 2), preact_bottleneck_unit(16, 8, 1))
        self.dense = nn.Sequential(dense_unit(32, 6, False), dense_unit(38, 6, True))
        self.head = nn.Sequential(nn.BatchNorm2d(44), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(44, 10))
        self.input_shape = (1, 8, 8)

    def forward(self, x):
        return self.head(self.dense(self.residual(self.stem(x))))


def test_a_model_from_outside_the_zoo_loses_its_residual_and_dense_units(tmp_path):
    torch.manual_seed(0)
    model = randomize_batchnorm_(UnitsNet())
    report = compress(model, method="energy", epochs=0, out=tmp_path / "out", bench_runs=1, progress=False,
                      device="cpu", method_options={"schedule": "2,2", "stages": 2})
    removed = report.structure.removed_units
    assert len(removed) == 4 and report.structure.pruning_stages[1].units_before == 3
    assert report.onnx.max_abs_diff <= report.onnx.tolerance
    assert report.compressed.params < report.dense.params


# ======================================================================================== refusals and options


def test_a_model_without_skip_units_is_refused_in_one_line(digits):
    model = create_model("lenet5")
    with pytest.raises(CompressorError, match="this model has none"):
        create_method("energy", 0.5, "structured").prepare(model, load_data("digits", model.input_shape))


def test_a_target_that_removing_every_unit_but_one_cannot_reach_is_refused(digits):
    with pytest.raises(CompressorError, match="cannot reach --target 99%"):
        create_method("energy", 0.99, "structured").prepare(resnet20(), digits)


@pytest.mark.parametrize("target, options, message", [
    (None, {}, "needs --target"),
    (0.5, {"pairs": "some"}, "pairs"),
    (0.5, {"statistic": "W"}, "statistic"),
    (0.5, {"selection": "best"}, "selection"),
    (0.5, {"keep": "middle"}, "keep"),
    (0.5, {"fraction": 1.0}, "fraction"),
    (0.5, {"samples": 1}, "samples"),
    (0.5, {"schedule": "4,0"}, "schedule"),
])
def test_bad_options_are_user_errors(target, options, message):
    with pytest.raises(CompressorError, match=message):
        create_method("energy", target, "structured", **options)


def test_a_bad_schedule_on_the_command_line_is_one_line(lenet5_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main([str(lenet5_checkpoint), "--method", "energy", "--target", "50%", "--option", "schedule=4,x"])
    err = capsys.readouterr().err
    assert code == 2 and "schedule" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_latency_target_removes_the_fewest_units_the_latency_table_says_reach_it(digits, tmp_path, monkeypatch):
    monkeypatch.setattr(EnergyMethod, "latency_measure", staticmethod(macs_latency_table))
    model, method, _ = run(digits, 0, target_latency=0.3, schedule="6", latency_cache=str(tmp_path))
    goal = method.latency_goal
    shipped = LatencyModel(model, SHAPE, goal.table).predict()
    assert method.predicted["latency_ms"] == pytest.approx(shipped)
    assert shipped <= 0.7 * goal.dense_predicted_ms
    # The table is the MACs here, so the latency target takes the units the MACs target takes.
    assert len(method.pruning_stages) == 1 and len(method.removed_units) == 3


def test_a_latency_target_out_of_reach_is_refused_before_training(digits, tmp_path, monkeypatch):
    monkeypatch.setattr(EnergyMethod, "latency_measure", staticmethod(macs_latency_table))
    with pytest.raises(CompressorError, match="cannot reach --target-latency 95%"):
        run(digits, 0, target_latency=0.95, latency_cache=str(tmp_path))
