"""Tests for the shared training loop: learning, evaluation, hooks, bitwise-exact resume, pruned weights."""

from __future__ import annotations

import copy
import logging
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils import prune
from torch.utils.data import DataLoader, TensorDataset

from compressor.errors import CompressorError, quoted
from compressor.training import TrainConfig, TrainingHooks, TrainResult, evaluate, train

SAMPLES = 256
BATCH = 32
BATCHES_PER_EPOCH = SAMPLES // BATCH


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tensors this small gain nothing from threads, and on a busy machine the threads' spinning makes these
    tests many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def blobs(seed: int) -> TensorDataset:
    """Two Gaussian blobs in 8 dimensions, well separated, half the samples each."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(SAMPLES) % 2
    centers = torch.stack([torch.full((8,), -1.0), torch.full((8,), 1.0)])
    inputs = centers[targets] + torch.randn(SAMPLES, 8, generator=generator)
    return TensorDataset(inputs, targets)


def loaders(with_generator: bool = True) -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(123) if with_generator else None
    train_loader = DataLoader(blobs(0), batch_size=BATCH, shuffle=True, generator=generator)
    test_loader = DataLoader(blobs(1), batch_size=64)
    return train_loader, test_loader


def mlp() -> nn.Module:
    torch.manual_seed(0)
    # Dropout makes the result depend on the global RNG, which resume must restore.
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))


def fast(epochs: int = 3, **overrides) -> TrainConfig:
    return TrainConfig(epochs=epochs, **overrides)


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name


def without_times(history):
    return [(record.epoch, record.train_loss, record.train_accuracy, record.test_accuracy) for record in history]


def test_training_learns_the_blobs():
    model = mlp()
    train_loader, test_loader = loaders()
    before = evaluate(model, test_loader)

    result = train(model, train_loader, test_loader, fast(), progress=False)

    assert isinstance(result, TrainResult)
    assert result.test_accuracy > 0.9 > before
    assert [record.epoch for record in result.history] == [1, 2, 3]
    assert result.history[-1].test_accuracy == result.test_accuracy
    assert result.history[-1].train_accuracy > 0.9
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.resumed_from_epoch == 0
    assert result.seconds_per_epoch > 0


def test_training_is_seeded():
    train_loader, test_loader = loaders()
    first, second = mlp(), mlp()
    train(first, train_loader, test_loader, fast(2), progress=False)
    train(second, train_loader, test_loader, fast(2), progress=False)
    assert_same_weights(first, second)


def test_evaluate_returns_a_fraction_and_restores_the_mode():
    model = mlp()
    _, test_loader = loaders()
    model.train()
    accuracy = evaluate(model, test_loader)
    assert 0.0 <= accuracy <= 1.0
    assert model.training
    model.eval()
    evaluate(model, test_loader)
    assert not model.training


def test_zero_epochs_only_evaluates():
    model = mlp()
    before = copy.deepcopy(model)
    train_loader, test_loader = loaders()
    result = train(model, train_loader, test_loader, fast(0), progress=False)
    assert result.history == []
    assert result.test_accuracy == evaluate(before, test_loader)
    assert_same_weights(model, before)


def test_progress_bar_on_a_terminal_and_log_line(caplog, capsys, monkeypatch):
    train_loader, test_loader = loaders()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with caplog.at_level(logging.INFO, logger="compressor.training"):
        train(mlp(), train_loader, test_loader, fast(1), progress=True, description="dense")
    assert "dense 1/1" in capsys.readouterr().err
    assert any("dense epoch 1/1" in message and "test acc" in message for message in caplog.messages)


def test_no_progress_bar_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    train_loader, test_loader = loaders()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    train(mlp(), train_loader, test_loader, fast(1), progress=True, description="dense")
    assert "dense 1/1" not in capsys.readouterr().err


class CountingHooks(TrainingHooks):
    def __init__(self):
        self.steps: list[int] = []
        self.epochs: list[int] = []

    def after_step(self, model, step):
        self.steps.append(step)

    def after_epoch(self, model, epoch):
        self.epochs.append(epoch)


def test_after_step_and_after_epoch_are_called_for_every_batch_and_epoch():
    hooks = CountingHooks()
    train_loader, test_loader = loaders()
    train(mlp(), train_loader, test_loader, fast(3), hooks=hooks, progress=False)
    assert hooks.steps == list(range(1, 3 * BATCHES_PER_EPOCH + 1))
    assert hooks.epochs == [1, 2, 3]


class ShrinkLastLayer(TrainingHooks):
    def extra_loss(self, model):
        return 10.0 * model[3].weight.pow(2).sum()


def test_extra_loss_changes_training():
    train_loader, test_loader = loaders()
    plain, penalised = mlp(), mlp()
    train(plain, train_loader, test_loader, fast(2), progress=False)
    train(penalised, train_loader, test_loader, fast(2), hooks=ShrinkLastLayer(), progress=False)
    assert penalised[3].weight.norm() < 0.5 * plain[3].weight.norm()


class FreezeFirstLayer(TrainingHooks):
    def param_groups(self, model):
        first = list(model[0].parameters())
        rest = [p for p in model.parameters() if all(p is not q for q in first)]
        return [{"params": first, "lr": 0.0, "weight_decay": 0.0}, {"params": rest}]


class AlternateLayers(TrainingHooks):
    """Odd epochs train the first layer only, even epochs the last; the weights are copied after every epoch."""

    def __init__(self):
        self.calls: list[tuple[int, bool]] = []
        self.after: list[nn.Module] = []

    def before_epoch(self, model, epoch):
        self.calls.append((epoch, model.training))
        for p in model[0].parameters():
            p.requires_grad_(epoch % 2 == 1)
        for p in model[3].parameters():
            p.requires_grad_(epoch % 2 == 0)

    def after_epoch(self, model, epoch):
        self.after.append(copy.deepcopy(model))


def test_before_epoch_may_freeze_a_parameter_set_that_then_does_not_move():
    model = mlp()
    train_loader, test_loader = loaders()
    hooks = AlternateLayers()
    # Weight decay and momentum: neither may move a parameter frozen for the epoch.
    train(model, train_loader, test_loader, fast(3, weight_decay=0.1), hooks=hooks, progress=False)
    assert hooks.calls == [(1, True), (2, True), (3, True)]
    first, second, third = hooks.after
    assert_same_weights(first[3], mlp()[3])
    assert_same_weights(second[0], first[0])
    assert_same_weights(third[3], second[3])
    assert not torch.equal(first[0].weight, mlp()[0].weight) and not torch.equal(second[3].weight, first[3].weight)


def test_param_groups_are_honoured():
    model = mlp()
    first_before = copy.deepcopy(model[0])
    last_before = copy.deepcopy(model[3])
    train_loader, test_loader = loaders()
    train(model, train_loader, test_loader, fast(2), hooks=FreezeFirstLayer(), progress=False)
    assert_same_weights(model[0], first_before)
    assert not torch.equal(model[3].weight, last_before.weight)


class Interrupt(TrainingHooks):
    """Counts steps (state that must survive a resume) and stops the run like Ctrl-C where told."""

    def __init__(self, stop_after_epoch: int | None = None, stop_at_step: int | None = None):
        self.stop_after_epoch = stop_after_epoch
        self.stop_at_step = stop_at_step
        self.count = 0

    def after_step(self, model, step):
        self.count += 1
        if step == self.stop_at_step:
            raise KeyboardInterrupt

    def after_epoch(self, model, epoch):
        if epoch == self.stop_after_epoch:
            raise KeyboardInterrupt

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


@pytest.mark.parametrize("with_generator", [True, False], ids=["loader-generator", "global-rng"])
@pytest.mark.parametrize(
    "interrupt, saved_epochs",
    [
        # after_epoch runs before the save, so stopping in epoch 3's hook leaves epochs 1-2 saved.
        (dict(stop_after_epoch=3), 2),
        (dict(stop_at_step=2 * BATCHES_PER_EPOCH + 3), 2),
    ],
    ids=["between-epochs", "mid-epoch"],
)
def test_resume_after_interrupt_is_bitwise_identical(tmp_path, with_generator, interrupt, saved_epochs):
    state_path = tmp_path / "train.state"
    config = fast(4)

    train_loader, test_loader = loaders(with_generator)
    reference = mlp()
    reference_hooks = Interrupt()
    expected = train(reference, train_loader, test_loader, config, hooks=reference_hooks, progress=False)

    train_loader, test_loader = loaders(with_generator)
    model = mlp()
    with pytest.raises(KeyboardInterrupt):
        train(model, train_loader, test_loader, config, hooks=Interrupt(**interrupt), state_path=state_path,
              progress=False)
    assert state_path.exists()

    # A new process: fresh loaders, model and hooks, and a global RNG somewhere else entirely.
    torch.manual_seed(999)
    train_loader, test_loader = loaders(with_generator)
    resumed_model = mlp()
    resumed_hooks = Interrupt()
    result = train(resumed_model, train_loader, test_loader, config, hooks=resumed_hooks, state_path=state_path,
                   resume=True, progress=False)

    assert result.resumed_from_epoch == saved_epochs
    assert_same_weights(resumed_model, reference)
    assert resumed_hooks.count == reference_hooks.count == 4 * BATCHES_PER_EPOCH
    assert result.test_accuracy == expected.test_accuracy
    assert without_times(result.history) == without_times(expected.history)
    assert state_path.exists(), "the state stays until the caller has written the run's output"


def test_resume_without_state_starts_fresh(tmp_path, caplog):
    train_loader, test_loader = loaders()
    reference = mlp()
    train(reference, train_loader, test_loader, fast(2), progress=False)

    model = mlp()
    with caplog.at_level(logging.INFO, logger="compressor.training"):
        result = train(model, train_loader, test_loader, fast(2), state_path=tmp_path / "missing.state",
                       resume=True, progress=False)
    assert result.resumed_from_epoch == 0
    assert any("starting fresh" in message for message in caplog.messages)
    assert_same_weights(model, reference)


def interrupted_state(tmp_path, config: TrainConfig):
    state_path = tmp_path / "train.state"
    train_loader, test_loader = loaders()
    with pytest.raises(KeyboardInterrupt):
        train(mlp(), train_loader, test_loader, config, hooks=Interrupt(stop_after_epoch=2), state_path=state_path,
              progress=False)
    return state_path


def test_resume_with_different_settings_is_refused(tmp_path):
    state_path = interrupted_state(tmp_path, fast(3))
    train_loader, test_loader = loaders()
    with pytest.raises(CompressorError, match=r"different settings \(lr 0\.05 -> 0\.1\)") as error:
        train(mlp(), train_loader, test_loader, fast(3, lr=0.1), state_path=state_path, resume=True,
              progress=False)
    assert "\n" not in str(error.value)
    assert state_path.exists()


def test_resume_with_a_different_model_is_refused(tmp_path):
    state_path = interrupted_state(tmp_path, fast(3))
    train_loader, test_loader = loaders()
    wider = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 2))
    with pytest.raises(CompressorError, match="different model, method or training data"):
        train(wider, train_loader, test_loader, fast(3), state_path=state_path, resume=True, progress=False)


@pytest.mark.parametrize("content", [bytes(2**20), b"garbage that is no training state"])
def test_a_damaged_state_is_refused_without_torchs_advice(tmp_path, content):
    # torch's own message for a file of zeros advises loading it with weights_only=False.
    state_path = tmp_path / "train.state"
    state_path.write_bytes(content)
    train_loader, test_loader = loaders()
    with pytest.raises(CompressorError) as caught:
        train(mlp(), train_loader, test_loader, fast(3), state_path=state_path, resume=True, progress=False)
    assert str(caught.value) == (f"the training state {quoted(state_path)} is damaged; to start over, run without "
                                 "--resume (that discards it)")


def test_without_resume_an_old_state_is_ignored(tmp_path):
    state_path = interrupted_state(tmp_path, fast(3))
    train_loader, test_loader = loaders()
    reference = mlp()
    train(reference, train_loader, test_loader, fast(3), progress=False)
    model = mlp()
    result = train(model, train_loader, test_loader, fast(3), state_path=state_path, progress=False)
    assert result.resumed_from_epoch == 0
    assert_same_weights(model, reference)


def test_pruned_weights_stay_zero(tmp_path):
    model = mlp()
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    prune.l1_unstructured(model[3], "weight", amount=0.5)
    masks = {index: model[index].weight_mask.clone() for index in (0, 3)}
    first_before = model[0].weight.detach().clone()
    train_loader, test_loader = loaders()

    with pytest.raises(KeyboardInterrupt):
        train(model, train_loader, test_loader, fast(3), hooks=Interrupt(stop_after_epoch=2),
              state_path=tmp_path / "train.state", progress=False)
    resumed = mlp()
    prune.identity(resumed[0], "weight")
    prune.identity(resumed[3], "weight")
    result = train(resumed, train_loader, test_loader, fast(3), state_path=tmp_path / "train.state", resume=True,
                   progress=False)

    assert result.resumed_from_epoch == 1
    assert result.test_accuracy > 0.9
    for index, mask in masks.items():
        layer = resumed[index]
        assert torch.equal(layer.weight_mask, mask)
        assert torch.all(layer.weight[mask == 0] == 0)
        assert torch.all(layer.weight[mask == 1] != 0)
    assert not torch.equal(resumed[0].weight, first_before)


def test_empty_training_data_is_a_user_error():
    _, test_loader = loaders()
    empty = DataLoader(TensorDataset(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long)), batch_size=BATCH)
    with pytest.raises(CompressorError, match="training data is empty"):
        train(mlp(), empty, test_loader, fast(1), progress=False)
