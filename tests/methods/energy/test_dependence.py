"""Tests of the energy method's dependence measures (compressor.methods.energy.dependence): the energy distance
against dcor, the energy dependence of features on labels, and the captured outputs and scores of skip-units.
"""

from __future__ import annotations

import dcor
import pytest
import torch

from compressor.methods.energy.dependence import (_capture, class_distances, dependence, energy_distance,
                                                  unit_dependences, unit_output_module)
from structured_methods import SHAPE, generator, zoo_model


# ============================================================================================ energy distance


@pytest.mark.parametrize("statistic", ["V", "U"])
@pytest.mark.parametrize("sizes, dim", [((7, 12), 1), ((30, 17), 5), ((40, 64), 64)])
def test_energy_distance_equals_dcor(statistic, sizes, dim):
    g = generator(sum(sizes) + dim)
    x = torch.randn(sizes[0], dim, generator=g, dtype=torch.float64)
    y = torch.randn(sizes[1], dim, generator=g, dtype=torch.float64) * 1.5 + 0.3
    expected = dcor.energy_distance(x.numpy(), y.numpy(), estimation_stat=statistic)
    assert energy_distance(x, y, statistic) == pytest.approx(expected, rel=1e-6)


def test_energy_distance_of_dcors_documented_example():
    a = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]], dtype=torch.float32)
    b = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.float32)
    assert energy_distance(a, b) == pytest.approx(20.5780594, abs=1e-7)


def test_energy_distance_is_zero_for_identical_samples_symmetric_and_non_negative():
    g = generator(1)
    x, y = torch.randn(25, 8, generator=g), torch.randn(31, 8, generator=g)
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert energy_distance(x, y) == pytest.approx(energy_distance(y, x), rel=1e-8)
    assert energy_distance(x, y) >= 0


def test_energy_distance_grows_with_the_shift_of_the_mean():
    g = generator(2)
    x = torch.randn(400, 4, generator=g)
    distances = [energy_distance(x, torch.randn(400, 4, generator=g) + shift) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert distances == sorted(distances) and distances[0] < 0.05 < distances[1]


# ================================================================================================ dependence


def labelled(classes: int, per_class: int, seed: int = 0):
    g = generator(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return labels, g


def test_dependence_is_zero_when_every_class_has_the_same_samples():
    labels, g = labelled(4, 10)
    same = torch.randn(10, 6, generator=g).repeat(4, 1)
    distances, counts = class_distances(same, labels, 4)
    assert dependence(distances, counts, "all") == pytest.approx(0.0, abs=1e-9)
    assert dependence(distances, counts, "reference") == pytest.approx(0.0, abs=1e-9)


def test_dependence_is_large_for_a_feature_that_encodes_the_label_and_small_for_shuffled_labels():
    labels, g = labelled(5, 40)
    features = torch.randn(200, 3, generator=g) * 0.3 + labels[:, None].float()
    true = dependence(*class_distances(features, labels, 5))
    shuffled = dependence(*class_distances(features, labels[torch.randperm(200, generator=g)], 5))
    assert true > 1.0 and shuffled < 0.1 * true


def test_dependence_ignores_the_order_within_a_class_and_the_reference_pairs_are_a_subset():
    labels, g = labelled(3, 15)
    labels = torch.cat([labels, torch.zeros(5, dtype=torch.long)])  # class 0 is the most frequent
    features = torch.randn(50, 7, generator=g) + labels[:, None].float() * torch.randn(7, generator=g)
    order = torch.cat([torch.nonzero(labels == c).flatten()[torch.randperm(int((labels == c).sum()), generator=g)]
                       for c in range(3)])
    all_pairs = dependence(*class_distances(features, labels, 3))
    assert dependence(*class_distances(features[order], labels[order], 3)) == pytest.approx(all_pairs, rel=1e-9)
    distances, counts = class_distances(features, labels, 3)
    reference = dependence(distances, counts, "reference")
    assert reference == pytest.approx(float(distances[0, 1:].max()), rel=1e-12)
    assert reference <= all_pairs


def test_a_class_without_samples_is_left_out_and_one_class_has_no_dependence():
    labels, g = labelled(3, 10)
    features = torch.randn(30, 4, generator=g) + labels[:, None].float()
    with_empty = dependence(*class_distances(features, labels, 5))
    assert with_empty == pytest.approx(dependence(*class_distances(features, labels, 3)), rel=1e-12)
    assert dependence(*class_distances(features[:10], labels[:10], 3)) == 0.0


def test_the_captured_output_of_a_unit_is_its_branch_output_flattened():
    model = zoo_model("resnet20")
    x = torch.randn(5, *SHAPE, generator=generator(5))
    unit = model.features.stage2[1]
    inputs = []
    unit.register_forward_hook(lambda m, args, out: inputs.append(args[0]))
    captured = _capture(model, {"u": unit_output_module(unit)}, x, batch=2)["u"]
    assert [len(batch) for batch in inputs] == [2, 2, 1]
    with torch.no_grad():
        expected = unit.branch(unit.preact(torch.cat(inputs))).flatten(1)
    assert captured.shape == (5, 32 * 4 * 4)
    assert torch.allclose(captured, expected, atol=1e-6)


def test_a_dense_units_output_is_its_new_features_or_with_concat_everything():
    model = zoo_model("densenet40")
    unit = model.features.block2[0]
    assert unit_output_module(unit) is unit.new_features
    assert unit_output_module(unit, "concat") is unit


def test_unit_dependences_score_every_unit_and_the_scores_follow_the_labels():
    model = zoo_model("resnet20")
    labels, g = labelled(3, 20)
    images = torch.randn(60, *SHAPE, generator=g) + labels[:, None, None, None].float()
    units = ["features.stage1.0", "features.stage3.2"]
    scores = unit_dependences(model, units, images, labels, 3)
    assert set(scores) == set(units) and all(value > 0 for value in scores.values())
    standardized = unit_dependences(model, units, images, labels, 3, standardize=True)
    assert standardized["features.stage1.0"] == pytest.approx(scores["features.stage1.0"] / (16 * 64) ** 0.5)
    shuffled = unit_dependences(model, units, images, labels[torch.randperm(60, generator=g)], 3)
    assert all(shuffled[u] < scores[u] for u in units)
