"""Tests for `check_resume_settings`: a resume whose settings differ from the saved state's is refused, with the
training loop's message, by reading the state alone (no model); anything else is left to the loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from compressor.errors import ResumeRefused, quoted
from compressor.training import TrainConfig, TrainingHooks, check_resume_settings, train

CONFIG = TrainConfig(epochs=3)


class Method(TrainingHooks):
    """A method with one option (or none), which stops the run like Ctrl-C in epoch `stop_in_epoch` when given."""

    def __init__(self, strength: float | None = 1.0, stop_in_epoch: int | None = None):
        self.strength, self.stop_in_epoch = strength, stop_in_epoch

    def fingerprint(self):
        return {} if self.strength is None else {"strength": self.strength}

    def after_epoch(self, model, epoch):
        if epoch == self.stop_in_epoch:
            raise KeyboardInterrupt


def data() -> DataLoader:
    inputs = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(inputs, torch.arange(16) % 2), batch_size=8)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 2)


def interrupted_state(tmp_path: Path, strength: float | None = 1.0) -> Path:
    """The state of a run of `CONFIG` stopped in its second epoch, after the first was saved."""
    path = tmp_path / "train.state"
    with pytest.raises(KeyboardInterrupt):
        train(model(), data(), data(), CONFIG, hooks=Method(strength, stop_in_epoch=2), state_path=path,
              progress=False)
    assert path.exists()
    return path


def loop_refusal(path: Path, config: TrainConfig, hooks: TrainingHooks, resumed: nn.Module) -> str:
    with pytest.raises(ResumeRefused) as refused:
        train(resumed, data(), data(), config, hooks=hooks, state_path=path, resume=True, progress=False)
    return str(refused.value)


@pytest.mark.parametrize(
    "config, strength, changed",
    [
        (TrainConfig(epochs=3, lr=0.1), 1.0, "lr 0.05 -> 0.1"),
        (CONFIG, 2.0, "strength 1.0 -> 2.0"),
        (TrainConfig(epochs=4, optimizer="adam"), 2.0, "epochs 3 -> 4, optimizer 'sgd' -> 'adam', strength 1.0 -> 2.0"),
    ],
    ids=["config", "method", "both"],
)
def test_a_state_with_other_settings_is_refused_with_the_loops_message(tmp_path, config, strength, changed):
    path = interrupted_state(tmp_path)
    saved = path.read_bytes()
    with pytest.raises(ResumeRefused) as refused:
        check_resume_settings(path, config, Method(strength).fingerprint())
    assert str(refused.value) == loop_refusal(path, config, Method(strength), model())
    assert f"different settings ({changed});" in str(refused.value)
    assert path.read_bytes() == saved


@pytest.mark.parametrize("strength", [1.0, None], ids=["method", "no-method-options"])
def test_equal_settings_pass_and_the_run_resumes(tmp_path, strength):
    path = interrupted_state(tmp_path, strength)
    fingerprint = Method(strength).fingerprint() if strength is not None else None
    check_resume_settings(path, CONFIG, fingerprint)
    result = train(model(), data(), data(), CONFIG, hooks=Method(strength), state_path=path, resume=True,
                   progress=False)
    assert result.resumed_from_epoch == 1


def test_no_state_passes(tmp_path):
    check_resume_settings(tmp_path / "missing.state", CONFIG, None)


def test_a_different_model_is_left_to_the_loop(tmp_path):
    path = interrupted_state(tmp_path)
    check_resume_settings(path, CONFIG, Method().fingerprint())
    assert "different model, method or training data" in loop_refusal(path, CONFIG, Method(), nn.Linear(4, 3))


def test_a_damaged_state_is_refused_as_the_loop_refuses_it(tmp_path):
    path = tmp_path / "train.state"
    path.write_bytes(b"garbage that is no training state")
    with pytest.raises(ResumeRefused) as refused:
        check_resume_settings(path, CONFIG, None)
    assert str(refused.value) == (f"the training state {quoted(path)} is damaged; to start over, run without "
                                  "--resume (that discards it)")
    assert str(refused.value) == loop_refusal(path, CONFIG, Method(), model())
