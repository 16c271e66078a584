"""Cases that run in every process of a `torchrun --nproc_per_node 2` group, for tests/test_distributed.py.

`torchrun ... distributed_cases.py CASE[,CASE...] FOLDER` joins the group on the CPU (gloo) and runs the cases in
turn; in each, every process writes what the test compares into FOLDER/CASE, named by its rank. Cases share a
launch where they can: starting two processes costs more than most cases. After leaving the group, every process
writes into FOLDER/threads how many of its threads were gloo's before and after (see `gloo_threads`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from compressor.data import load_data
from compressor.distributed import check_replicas_agree, group, launched, start, stop
from compressor.errors import CompressorError, VerificationError
from compressor.methods import create_method
from compressor.models import create_model
from compressor.training import TrainConfig, TrainingHooks, train

SEED = 0
BATCH = 64
EPOCHS = 2


def reference_setup(method: str | None):
    """The model, data and hooks every process (and the single-process reference) starts from."""
    torch.manual_seed(SEED)
    model = create_model("lenet300_100")
    bundle = load_data("digits", model.input_shape, batch_size=BATCH, seed=SEED)
    hooks = None
    if method is not None:
        hooks = create_method(method, 0.8)
        model = hooks.prepare(model, bundle)
    return model, bundle, hooks


def train_case(folder: Path, method: str | None) -> None:
    model, bundle, hooks = reference_setup(method)
    train(model, bundle.train, bundle.test, TrainConfig(epochs=EPOCHS, seed=SEED), hooks=hooks, progress=False)
    torch.save(model.state_dict(), folder / f"rank{group().rank}.pt")


class StopAfterTraining(TrainingHooks):
    """Stops the run like Ctrl-C once `epoch` is trained, before its state is saved."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def after_epoch(self, model, epoch: int) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt


def resume_case(folder: Path) -> None:
    """An uninterrupted run, and one interrupted in its second epoch and resumed: they must end the same."""
    model, bundle, _ = reference_setup(None)
    config = TrainConfig(epochs=3, seed=SEED)
    train(model, bundle.train, bundle.test, config, progress=False)
    resumed, bundle, _ = reference_setup(None)
    state = folder / "state.pt"
    try:
        train(resumed, bundle.train, bundle.test, config, hooks=StopAfterTraining(2), state_path=state,
              progress=False)
    except KeyboardInterrupt:
        pass
    resumed, bundle, _ = reference_setup(None)
    result = train(resumed, bundle.train, bundle.test, config, state_path=state, resume=True, progress=False)
    same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))
    (folder / f"rank{group().rank}.txt").write_text(f"resumed after {result.resumed_from_epoch}, same {same}")


def batchnorm_case(folder: Path) -> None:
    """A model with BatchNorm, whose running statistics each process updates from its own shard."""
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    bundle = load_data("digits", (1, 8, 8), batch_size=BATCH, seed=SEED)
    train(model, bundle.train, bundle.test, TrainConfig(epochs=1, seed=SEED), progress=False)
    torch.save(model.state_dict(), folder / f"rank{group().rank}.pt")


def unused_parameter_case(folder: Path) -> None:
    """A model with a trained layer its forward pass never calls."""
    torch.manual_seed(SEED)
    model = create_model("lenet300_100")
    model.spare = nn.Linear(4, 4)
    bundle = load_data("digits", model.input_shape, batch_size=BATCH, seed=SEED)
    try:
        train(model, bundle.train, bundle.test, TrainConfig(epochs=1, seed=SEED), progress=False)
        outcome = "trained"
    except CompressorError as error:
        outcome = str(error)
    (folder / f"rank{group().rank}.txt").write_text(outcome)


def diverging_case(folder: Path) -> None:
    model = create_model("lenet300_100")
    if group().rank == 1:
        with torch.no_grad():
            model.classifier.fc.bias[0] += 1e-3
    try:
        check_replicas_agree(model)
        outcome = "agreed"
    except VerificationError as error:
        outcome = str(error)
    (folder / f"rank{group().rank}.txt").write_text(outcome)


CASES = {
    "dense": lambda folder: train_case(folder, None),
    "magnitude": lambda folder: train_case(folder, "magnitude"),
    "batchnorm": batchnorm_case,
    "resume": resume_case,
    "unused": unused_parameter_case,
    "diverging": diverging_case,
}


def gloo_threads() -> int | None:
    """How many of this process's threads are gloo's (its worker and network threads, named so by torch and
    gloo), or None where the system does not list a process's threads by name."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return None
    names = []
    for task in tasks.iterdir():
        try:
            names.append((task / "comm").read_text())
        except OSError:  # the thread ended since the folder was listed
            pass
    return sum("gloo" in name for name in names)


if __name__ == "__main__":
    cases, out = sys.argv[1].split(","), Path(sys.argv[2])
    start("cpu")
    try:
        for case in cases:
            (out / case).mkdir(parents=True, exist_ok=True)
            CASES[case](out / case)
        joined = gloo_threads()
    finally:
        stop()
    (out / "threads").mkdir(exist_ok=True)
    (out / "threads" / f"rank{launched().rank}.txt").write_text(f"{joined} {gloo_threads()}")
