"""Tests of `--target-latency`: the target's spellings, the greedy choice of channels by importance lost per
millisecond saved on an injected (synthetic) latency table, and a whole `compress` run that reports the target,
the prediction and the two models timed on the latency backend."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from compressor.api import compress
from compressor.errors import CompressorError
from compressor.methods import create_method
from compressor.methods.channel import ChannelMethod
from compressor.methods.latency_goal import CHECK_TOLERANCE, Step, greedy_by_latency, parse_latency_target
from compressor.models import create_model
from compressor.report import Report
from compressor.runtime.latency_model import LayerSpec, probe_layers


@pytest.mark.parametrize("text, fraction", [("50%", 0.5), ("0.25", 0.25), ("2x", 0.5), ("4X", 0.75), (" 10% ", 0.1)])
def test_a_target_is_a_share_of_latency_removed_or_a_speedup(text, fraction):
    assert parse_latency_target(text) == pytest.approx(fraction)


@pytest.mark.parametrize("text", ["0", "0%", "100%", "1.0", "150%", "1x", "0.5x", "-2x", "fast", "x", ""])
def test_a_target_outside_what_can_be_reached_is_one_line(text):
    with pytest.raises(CompressorError) as error:
        parse_latency_target(text)
    assert "\n" not in str(error.value) and "--target-latency" in str(error.value)


class TwoGroups(nn.Module):
    """conv a (3→16) → conv b (16→16) → 1x1 head: two groups of 16 channels, a's outputs and b's outputs.

    Every filter of a has the same L1 norm; b's channels 0-7 are a hundred times weaker than 8-15, so by
    importance alone b's first eight channels go first."""

    def __init__(self):
        super().__init__()
        self.a, self.norm_a = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.b, self.norm_b = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 10, 1)
        self.input_shape = (3, 8, 8)
        with torch.no_grad():
            self.a.weight.fill_(0.1)
            self.b.weight.fill_(0.1)
            self.b.weight[:8].fill_(0.001)

    def forward(self, x):
        x = torch.relu(self.norm_a(self.a(x)))
        x = torch.relu(self.norm_b(self.b(x)))
        return self.head(x).mean(dim=(2, 3))


def table(ms_per_a_channel: float, ms_per_b_channel: float):
    """A synthetic latency table: each layer costs a fixed amount per output channel, the head almost nothing."""
    def measure(spec: LayerSpec) -> float:
        if spec.in_channels == 3:
            return ms_per_a_channel * spec.out_channels
        if spec.kernel == (3, 3):
            return ms_per_b_channel * spec.out_channels
        return 0.001
    return measure


@pytest.mark.parametrize("a_ms, b_ms, removed_from_a, removed_from_b", [
    # a's channels save 1000x more per channel: losing eight of its equal channels costs less per millisecond.
    (1.0, 0.001, 8, []),
    # b's weak channels save as much as a's: the weak ones go.
    (1.0, 1.0, 0, list(range(8))),
    # b saves a lot and a nothing: b's weak channels go.
    (0.001, 1.0, 0, list(range(8))),
])
def test_channels_go_by_importance_per_millisecond_of_the_table(tmp_path, a_ms, b_ms, removed_from_a, removed_from_b):
    model = TwoGroups().eval()
    method = create_method("channel", None, target_latency=0.2, latency_cache=str(tmp_path), latency_checks=0)
    method.latency_measure = table(a_ms, b_ms)
    chosen = {group.root: channels for group, channels in method.select(model, model.input_shape)}
    assert len(chosen["a"]) == removed_from_a
    assert chosen["b"] == removed_from_b
    # The prediction is the table's sum at the chosen widths, within the goal.
    measure = table(a_ms, b_ms)
    a, b = 16 - removed_from_a, 16 - len(removed_from_b)
    dense = measure(LayerSpec("conv", 3, 16)) + 16 * b_ms + 0.001
    predicted = a_ms * a + b_ms * b + 0.001
    assert method.predicted["latency_ms"] == pytest.approx(predicted)
    assert method.predicted["dense_latency_ms"] == pytest.approx(dense)
    assert predicted <= 0.8 * dense


def test_latency_ranking_differs_from_macs_ranking_where_the_table_says_so(tmp_path):
    """At the same MACs removed, the MACs target takes b's weak channels; the latency target a's channels."""
    model = TwoGroups().eval()
    by_macs = create_method("channel", 0.3)
    chosen = {group.root: channels for group, channels in by_macs.select(model, model.input_shape)}
    assert chosen["b"] == list(range(8)) and chosen["a"] == []


def test_a_target_the_table_cannot_reach_is_one_line(tmp_path):
    model = TwoGroups().eval()
    method = create_method("channel", None, target_latency=0.99, latency_cache=str(tmp_path), latency_checks=0)
    method.latency_measure = table(1.0, 1.0)
    with pytest.raises(CompressorError, match="latency target cannot be reached"):
        method.select(model, model.input_shape)


def straight_path(steps: int = 20):
    """A synthetic greedy path: plan i removes i channels and is predicted at 100 - 5i ms."""
    return iter([Step([list(range(i))], 1000 - i, 1000 - i, 100.0 - 5 * i) for i in range(steps)])


def test_without_timings_the_plan_is_the_first_within_the_goal():
    chosen, checks = greedy_by_latency(straight_path(), 100.0, 0.5, lambda params, macs: True)
    assert chosen.ms == 50.0 and checks == []


@pytest.mark.parametrize("bias", [1.25, 0.8])
def test_timings_move_the_goal_until_the_plan_measures_what_was_asked(bias):
    """A table that is off by a factor: the measured plan lands off the request, the goal moves by the factor,
    and the plan taken is the one measured closest to the request (further along when the table is optimistic,
    back when it is pessimistic)."""
    timed = []

    def check(plan):
        timed.append(len(plan[0]))
        return min(1.0, bias * (100.0 - 5 * len(plan[0])) / 100)

    chosen, checks = greedy_by_latency(straight_path(), 100.0, 0.5, lambda params, macs: True, check, rounds=3)
    assert timed[0] == 10 and len(checks) == len(timed) <= 3
    assert checks[0].predicted_removed == pytest.approx(0.5) and checks[0].measured_removed == pytest.approx(1 - bias / 2)
    assert abs(bias * chosen.ms / 100 - 0.5) <= CHECK_TOLERANCE + 0.05 * bias / 2
    assert (chosen.ms < 50.0) if bias > 1 else (chosen.ms > 50.0)


def test_timings_stop_once_a_plan_measures_within_the_tolerance():
    calls = []
    chosen, checks = greedy_by_latency(straight_path(), 100.0, 0.5, lambda params, macs: True,
                                       lambda plan: calls.append(plan) or 0.51, rounds=3)
    assert len(calls) == 1 and chosen.ms == 50.0 and checks[0].measured_removed == pytest.approx(0.49)


@pytest.mark.parametrize("timings, fraction, calls", [
    ([(100.0, 50.0), (100.0, 51.0)], 0.505, 2),  # two that agree: their mean
    ([(100.0, 50.0), (100.0, 80.0), (100.0, 52.0)], 0.52, 3),  # a burst in one: the third decides
])
def test_a_plan_is_timed_twice_and_a_third_time_when_the_two_disagree(tmp_path, monkeypatch, timings, fraction, calls):
    import compressor.methods.latency_goal as latency_target

    answers = iter(timings)
    monkeypatch.setattr(latency_target, "measure_models", lambda *args, **kwargs: next(answers))
    model = TwoGroups().eval()
    goal = latency_target.LatencyGoal(model, model.input_shape, 0.5, "ort-cpu", batch=2, threads=1,
                                      cache_dir=str(tmp_path), measure=table(1.0, 1.0))
    assert goal.measured_fraction(model) == pytest.approx(fraction)
    assert len(timings) - sum(1 for _ in answers) == calls


@pytest.mark.parametrize("options, message", [
    ({"target_latency": 0.5, "round_to": 1}, "needs --round-to"),
    ({"target_latency": 0.5, "scope": "uniform"}, "globally"),
    ({"target_latency": 0.5, "latency_backend": "abacus"}, "unknown latency backend"),
    ({"target_latency": 0.5, "latency_checks": -1}, "--latency-checks"),
])
def test_settings_that_cannot_work_are_refused_before_any_work(options, message):
    with pytest.raises(CompressorError, match=message):
        create_method("channel", None, **options)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_backend_without_a_gpu_is_refused_before_any_work():
    with pytest.raises(CompressorError, match="torch-cuda cannot run here"):
        create_method("channel", None, target_latency=0.5, latency_backend="torch-cuda")


def test_compress_reports_target_prediction_and_measurement(tmp_path, monkeypatch):
    # A synthetic table (so the choice does not depend on this machine's load); the models are timed for real.
    def measure(spec: LayerSpec) -> float:
        return 1e-4 * spec.in_channels * spec.out_channels * max(1, spec.spatial[0] if spec.spatial else 1)

    monkeypatch.setattr(ChannelMethod, "latency_measure", staticmethod(measure))
    torch.manual_seed(0)
    model = create_model("lenet5")
    report = compress(model, "channel", None, epochs=0, out=tmp_path / "out", bench_runs=5, bench_batch=4,
                      method_options={"target_latency": 0.5, "latency_cache": str(tmp_path / "cache"),
                                      "latency_checks": 1}, progress=False)
    lt = report.latency_target
    assert (lt.backend, lt.batch, lt.target) == ("ort-cpu", 4, 0.5)
    # The table's first plan is within the goal, and it was compiled and timed whole (one timing: the goal moving
    # by what is measured is tested above on a synthetic path).
    assert len(lt.checks) == 1 and lt.checks[0].predicted_removed >= 0.5
    assert lt.checks[0].predicted_removed == pytest.approx(lt.predicted_removed)
    assert lt.dense_measured_ms > 0 and lt.compressed_measured_ms > 0
    # The compiled model's prediction is its own layers' entries summed.
    layers, _ = probe_layers(model.eval(), model.input_shape)
    assert lt.dense_predicted_ms == pytest.approx(sum(measure(layer.spec) for layer in layers))
    assert [layer.name for layer in lt.layers] == [layer.name for layer in layers]
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert Report.from_dict(written).latency_target == lt
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## Latency target" in markdown and "predicted ÷ measured" in markdown and "latency removed (measured)" in markdown
