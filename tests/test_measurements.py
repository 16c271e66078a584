"""The report's rows counted on a run's models and joined with what the method recorded: the training cost per
epoch, the stages in the model's order, the survivors' probabilities binned."""

from compressor.measurements import _probability_counts, _stage_stats, training_cost
from compressor.methods.base import StructureOutcome
from compressor.report import EpochCost
from compressor.training import EpochRecord


def test_training_cost_joins_the_method_records_with_the_history_by_epoch():
    # Epochs in a different order than the method recorded them, and one the method did not record.
    history = [EpochRecord(epoch=e, train_loss=0.1, train_accuracy=0.9, test_accuracy=e / 10, seconds=float(e))
               for e in (3, 1, 2)]
    records = [{"epoch": 2, "macs_trained": 800, "macs_alive": 600.0, "params_alive": 40.0, "expected_macs": 700.0,
                "rho": 0.2},
               {"epoch": 3, "macs_trained": 600, "macs_alive": 600.0, "params_alive": 40.0, "expected_macs": 600.0,
                "rho": 0.0}]
    assert training_cost(StructureOutcome(training_cost=records), history) == [
        EpochCost(epoch=2, seconds=2.0, macs_trained=800, predicted_macs_alive=600.0, test_accuracy=0.2),
        EpochCost(epoch=3, seconds=3.0, macs_trained=600, predicted_macs_alive=600.0, test_accuracy=0.3)]
    assert training_cost(None, history) == []


def test_stages_follow_the_model_order_and_probabilities_only_those_recorded():
    stages = {"classifier.fc1": {"units": [], "removed_units": [], "channels": {"classifier.fc1": [500, 120]}},
              "features.conv1": {"units": [], "removed_units": [], "channels": {"features.conv1": [20, 11]}}}
    ordered = _stage_stats(stages, ["features.conv1", "features.conv2", "classifier.fc1", "classifier.fc2"])
    assert [stage.name for stage in ordered] == ["features.conv1", "classifier.fc1"]
    counts = _probability_counts({"theta": [], "pi": [0.95, 0.2]}, 0.1)
    assert [(row.variable, row.high, row.low) for row in counts] == [("π", 1, 1)]
