"""The device a run trains on, and data-parallel training across the processes `torchrun` starts.

`start(spec)` resolves `--device auto|cpu|cuda[:N]` and, in a process started by `torchrun --nproc_per_node N`,
joins the process group (`nccl` on GPUs, `gloo` on the CPU; each process takes the GPU of its local rank).
Training then runs under PyTorch's DistributedDataParallel: each process reads its shard of every global batch
(a DistributedSampler reseeded per epoch, so a resumed run sees the same order), gradients are averaged across
processes, and everything a method derives from the weights (masks, thresholds, gates) comes out the same on
every process. Only the main process (rank 0) writes files and talks to the terminal. A run without torchrun is
a group of one, and every function here leaves it as it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from compressor.errors import CompressorError, VerificationError, first_line

logger = logging.getLogger(__name__)

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


@dataclass(frozen=True)
class Group:
    """This process's place among the processes of one run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes the outputs and the terminal output."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


def launched() -> Group:
    """The group torchrun started this process in, from its environment (a group of one without torchrun);
    known before the process group is joined, so the command can quiet other ranks from its first line."""
    return Group(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                 int(os.environ.get("LOCAL_RANK", 0)))


def group() -> Group:
    """The group this process has joined (a group of one when it has joined none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Group()
    return Group(dist.get_rank(), dist.get_world_size(), launched().local_rank)


def resolve_device(spec: str | torch.device | None) -> torch.device:
    """`auto` (or None) → the GPU when torch sees one, else the CPU; `cpu`; `cuda` or `cuda:N`, refused in one line
    where torch sees no such GPU."""
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise CompressorError(f"--device must be {DEVICE_CHOICES}, not {spec!r}") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise CompressorError(f"--device must be {DEVICE_CHOICES}, not {spec!r}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise CompressorError(f"--device {text}: torch sees no CUDA GPU here (torch {torch.__version__}, "
                              f"CUDA build {torch.version.cuda or 'none'}); use --device cpu")
    if device.index is not None and device.index >= count:
        raise CompressorError(f"--device {text}: torch sees {count} GPU(s), cuda:0 to cuda:{count - 1}")
    return device


def describe_device(device: torch.device) -> str:
    """The device for a report: `cpu`, or `cuda:0 (NVIDIA H100 80GB HBM3)`."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def start(spec: str | torch.device | None) -> torch.device:
    """The device this process trains on; under torchrun, the process group is joined first.

    Each process of a GPU run takes the GPU of its local rank, whatever index `spec` names.
    """
    device = resolve_device(spec)
    place = launched()
    if not place.parallel:
        return device
    if device.type == "cuda":
        if place.local_rank >= torch.cuda.device_count():
            raise CompressorError(f"torchrun started {place.size} processes but this machine has "
                                  f"{torch.cuda.device_count()} GPU(s) for its local ranks")
        device = torch.device("cuda", place.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # torch.distributed.nn binds the world group as a default argument when it is first imported, which
        # DistributedDataParallel does. Imported after the group is joined, it would keep the group alive past
        # `stop()`, and with it gloo's worker threads. A worker may still be freeing the tensors of the last
        # collective when the caller has moved on; if the interpreter is shutting down by then, Python ends the
        # thread inside a C++ destructor and the process aborts ("terminate called without an active
        # exception"). Imported before the group exists, it binds none, and `stop()` ends the group.
        import torch.distributed.nn  # noqa: F401

        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def stop() -> None:
    """Leave the process group, if this process joined one: the group is destroyed here, its worker threads
    joined while the interpreter is whole (see `start`)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def together() -> Iterator[None]:
    """Run a block on every process and fail it on every process when it fails on any.

    Without this, a process that fails (a refused output on the main process, say) would leave the others
    waiting in their next collective call for ever. Every process that did not fail raises the failure of
    the lowest rank that did; the main process prints it.
    """
    here = group()
    if not here.parallel:
        yield
        return
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        # An interrupt reaches every process (torchrun forwards it); waiting here for the others could hang.
        raise
    except BaseException as error:
        _gather_failures(here, first_line(error) if isinstance(error, CompressorError)
                         else f"process {here.rank}: {type(error).__name__}: {first_line(error)}")
        raise
    failures = _gather_failures(here, None)
    if failures:
        raise CompressorError(failures[0])


def _gather_failures(here: Group, message: str | None) -> list[str]:
    """Every process's failure message (None where it did not fail), gathered on every process, by rank."""
    messages: list[str | None] = [None] * here.size
    dist.all_gather_object(messages, message)
    return [text for text in messages if text is not None]


def shard(loader: DataLoader, seed: int) -> DataLoader:
    """The part of `loader` this process trains on: every global batch of `loader.batch_size` samples split
    evenly across the processes, in an order that depends on `seed` and the epoch only."""
    here = group()
    if not here.parallel:
        return loader
    if loader.batch_size is None:
        raise CompressorError("under torchrun the training loader must have a batch_size (it is split over the "
                              "processes, each with a DistributedSampler), not a batch_sampler of its own")
    if loader.batch_size % here.size:
        raise CompressorError(f"--batch-size {loader.batch_size} does not split evenly over {here.size} processes")
    # The loader's own sampler gives way to the DistributedSampler; everything else about it is kept.
    sampler = DistributedSampler(loader.dataset, num_replicas=here.size, rank=here.rank, shuffle=True, seed=seed)
    return DataLoader(loader.dataset, batch_size=loader.batch_size // here.size, sampler=sampler,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      drop_last=loader.drop_last, worker_init_fn=loader.worker_init_fn,
                      persistent_workers=loader.persistent_workers if loader.num_workers else False)


def replicate(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` wrapped so that its backward pass averages gradients across the processes (the model itself
    when there is one process). DistributedDataParallel copies the main process's weights to the others first.

    The wrapper averages the gradients of the parameters that train when it is made: a method that stops
    training some (budget freezing its thresholds) turns their `requires_grad` off between epochs, and the
    training loop wraps the model anew.
    """
    if not group().parallel:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def check_every_parameter_trains(model: nn.Module) -> None:
    """After the first backward pass of a data-parallel wrapper: refuse a model with a trained parameter that
    got no gradient (its forward pass does not use it). DistributedDataParallel waits for every parameter's
    gradient and would fail at the next step; every process sees the same model and refuses alike."""
    if not group().parallel:
        return
    idle = [name for name, parameter in model.named_parameters() if parameter.requires_grad and parameter.grad is None]
    if idle:
        shown = ", ".join(idle[:3]) + (f" and {len(idle) - 3} more" if len(idle) > 3 else "")
        raise CompressorError(f"under torchrun every trained parameter must take part in the forward pass, and "
                              f"{shown} do(es) not: set requires_grad=False on it or remove it")


def share_running_statistics(model: nn.Module) -> None:
    """Give every process the main process's running statistics of its normalisation layers.

    DistributedDataParallel copies the main process's buffers to the others before each forward pass, and
    then each process updates its BatchNorm running mean and variance from its own shard: after the last step
    they differ. The main process's statistics are the run's (as DDP treats them); copying them at the end of
    every epoch lets every process evaluate, and end, with the same model.
    """
    if not group().parallel:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            for buffer in module.buffers(recurse=False):
                dist.broadcast(buffer, src=0)


def total(value: torch.Tensor) -> torch.Tensor:
    """`value` summed over the processes (itself when there is one)."""
    if group().parallel:
        value = value.clone()
        dist.all_reduce(value)
    return value


def from_main(value: object) -> object:
    """The main process's `value` on every process (`value` itself when there is one): a decision every process
    could compute, taken once, so that floating-point noise cannot make the processes disagree."""
    if not group().parallel:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_replicas_agree(model: nn.Module) -> None:
    """Verify that every process ends training with bit-identical weights and buffers (masks, thresholds,
    gates among them): a method whose state drifts apart across processes would compress a model nobody
    trained."""
    here = group()
    if not here.parallel:
        return
    digest = hashlib.sha256()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digests: list[str | None] = [None] * here.size
    dist.all_gather_object(digests, digest.hexdigest())
    if len(set(digests)) != 1:
        differing = [rank for rank, value in enumerate(digests) if value != digests[0]]
        raise VerificationError(f"after training, the weights of process(es) {differing} differ from process 0's")
    logger.debug("weights identical on all %d processes", here.size)
