"""`--device`, and data-parallel training under torchrun: two real processes on the CPU (gloo) per case.

Every case that starts torchrun is marked slow (seconds per launch); `-m "not slow"` keeps the device checks.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from compressor.api import compress
from compressor.cli import main
from compressor.distributed import resolve_device
from compressor.errors import CompressorError
from compressor.loading import save_checkpoint
from compressor.models import create_model
from distributed_cases import BATCH, EPOCHS, SEED, reference_setup
from compressor.training import TrainConfig, train

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
CASES = Path(__file__).with_name("distributed_cases.py")
# A group whose processes wait on each other forever would hang the suite: every run gets this long.
RUN_SECONDS = 300


# Cases run in one launch, in this order; the two that end in a refusal come last, after the collectives of the
# others.
SHARED_LAUNCH = ("dense", "magnitude", "batchnorm", "resume", "diverging", "unused")

slow = pytest.mark.slow


def torchrun(*args, cwd=None):
    return subprocess.run(TORCHRUN + [str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          timeout=RUN_SECONDS)


@pytest.fixture(scope="module")
def shared_launch(tmp_path_factory):
    """The folder the cases of SHARED_LAUNCH wrote into, after checking that the launch succeeded."""
    folder = tmp_path_factory.mktemp("cases")
    result = torchrun(CASES, ",".join(SHARED_LAUNCH), folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_device_names_resolve_or_are_refused():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(CompressorError, match="--device must be auto, cpu, cuda or cuda:N, not 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(CompressorError, match=r"--device cuda:99: torch sees|torch sees no CUDA GPU"):
        resolve_device("cuda:99")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU, so --device cuda is not refused")
@pytest.mark.parametrize("verb", [["train", "lenet300_100", "-o", "m.pt"], ["{model}", "--target", "50%"]])
def test_cuda_without_a_gpu_is_one_line_and_writes_nothing(verb, lenet5_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main([a.format(model=lenet5_checkpoint) for a in verb] + ["--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("compress: error: --device cuda: torch sees no CUDA GPU here")
    assert len(err.splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_the_report_records_where_the_method_trained(lenet5_checkpoint, tmp_path):
    report = compress(lenet5_checkpoint, "magnitude", "50%", epochs=1, out=tmp_path / "o", progress=False,
                      device="cpu")
    assert (report.device, report.processes) == ("cpu", 1)
    saved = json.loads((tmp_path / "o" / "report.json").read_text())
    assert (saved["device"], saved["processes"]) == ("cpu", 1)
    assert "on `digits` (cpu)" in (tmp_path / "o" / "report.md").read_text()


class GlobalBatches(Sampler):
    """The global batches of a 2-process run as one process sees them: at each step, the batch of process 0's
    shard followed by the batch of process 1's, from the DistributedSamplers the processes use (a new epoch at
    every pass, as `train` sets it on theirs)."""

    def __init__(self, dataset, per_process: int, seed: int):
        self.shards = [DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=seed)
                       for rank in (0, 1)]
        self.per_process = per_process
        self.epoch = 0

    def __iter__(self):
        self.epoch += 1
        for shard in self.shards:
            shard.set_epoch(self.epoch)
        first, second = (list(shard) for shard in self.shards)
        for start in range(0, len(first), self.per_process):
            yield first[start:start + self.per_process] + second[start:start + self.per_process]

    def __len__(self) -> int:
        return math.ceil(len(self.shards[0]) / self.per_process)


@slow
@pytest.mark.parametrize("method", ["dense", "magnitude"])
def test_two_processes_train_what_one_process_trains_on_the_same_global_batches(method, shared_launch):
    ranks = [torch.load(shared_launch / method / f"rank{rank}.pt") for rank in (0, 1)]
    assert all(torch.equal(ranks[0][name], ranks[1][name]) for name in ranks[0]), "processes ended apart"

    model, bundle, hooks = reference_setup(None if method == "dense" else method)
    dataset = bundle.train.dataset
    one_process = DataLoader(dataset, batch_sampler=GlobalBatches(dataset, BATCH // 2, SEED))
    train(model, one_process, bundle.test, TrainConfig(epochs=EPOCHS, seed=SEED), hooks=hooks, progress=False)
    # Summation order differs (two half-batch means averaged vs one mean): equal within float rounding.
    for name, expected in model.state_dict().items():
        torch.testing.assert_close(ranks[0][name], expected, rtol=1e-4, atol=1e-5, msg=name)


@slow
def test_processes_end_with_the_main_processs_batchnorm_statistics(shared_launch):
    ranks = [torch.load(shared_launch / "batchnorm" / f"rank{rank}.pt") for rank in (0, 1)]
    assert ranks[0]["1.running_var"].ne(1).any(), "the statistics were updated"
    assert all(torch.equal(ranks[0][name], ranks[1][name]) for name in ranks[0])


@slow
def test_an_interrupted_data_parallel_run_resumes_to_the_same_weights(shared_launch):
    for rank in (0, 1):
        assert (shared_launch / "resume" / f"rank{rank}.txt").read_text() == "resumed after 1, same True"


@slow
def test_leaving_the_group_ends_its_threads(shared_launch):
    # A group that outlives `stop()` keeps gloo's worker threads into interpreter shutdown, where a worker still
    # freeing the tensors of the last collective aborts the process (see `compressor.distributed.start`).
    for rank in (0, 1):
        joined, left = (shared_launch / "threads" / f"rank{rank}.txt").read_text().split()
        if joined in ("None", "0"):
            pytest.skip("this system does not name gloo's threads where the test can count them")
        assert left == "0", f"process {rank} kept {left} of gloo's {joined} threads after leaving the group"


@slow
def test_a_parameter_the_forward_pass_never_uses_is_refused_in_one_line(shared_launch):
    for rank in (0, 1):
        assert (shared_launch / "unused" / f"rank{rank}.txt").read_text() == (
            "under torchrun every trained parameter must take part in the forward pass, and spare.weight, "
            "spare.bias do(es) not: set requires_grad=False on it or remove it")


@slow
def test_processes_whose_weights_drift_apart_are_caught(shared_launch):
    for rank in (0, 1):
        assert (shared_launch / "diverging" / f"rank{rank}.txt").read_text() == \
            "after training, the weights of process(es) [1] differ from process 0's"


@slow
def test_torchrun_bernoulli_removes_structure_on_both_processes_alike(lenet5_checkpoint, tmp_path):
    # A high ρ makes neurons die within the first epochs, so both processes compile them away mid-run; the run
    # ends by checking that their weights agree.
    result = torchrun("-m", "compressor", lenet5_checkpoint, "--method", "bernoulli", "--option", "rho=50",
                      "--option", "probability_lr=0.2", "--epochs", "2", "--out", "D", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote D/") == 1 and "[rank1]" not in result.stderr
    report = json.loads((tmp_path / "D" / "report.json").read_text())
    assert report["structure"]["macs_removed"] > 0
    assert (report["device"], report["processes"]) == ("cpu", 2)


@slow
def test_torchrun_energy_removes_the_same_units_on_both_processes(tmp_path):
    # Each process scores the units; the main process's choice is taken by both, and the run ends by checking
    # that their weights agree.
    torch.manual_seed(0)
    save_checkpoint(create_model("resnet20"), tmp_path / "r20.pt")
    result = torchrun("-m", "compressor", "r20.pt", "--method", "energy", "--option", "stages=2", "--epochs", "1",
                      "--input-shape", "3,8,8", "--out", "D", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "D" / "report.json").read_text())
    assert [len(stage["removed"]) for stage in report["structure"]["pruning_stages"]] == [2, 1]
    assert (report["device"], report["processes"]) == ("cpu", 2)
    assert "dependence.png" in result.stdout


@slow
@pytest.mark.parametrize("method, epochs", [("magnitude", 1), ("budget", 2), ("snapshot", 1)])
def test_torchrun_compress_writes_the_output_once(method, epochs, lenet5_checkpoint, tmp_path):
    result = torchrun("-m", "compressor", lenet5_checkpoint, "--method", method, "--target", "85%", "--epochs", epochs,
                      "--out", "D", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote D/") == 1 and "[rank1]" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D"]
    assert sorted(p.name for p in (tmp_path / "D").iterdir()) == ["model.onnx", "model.pt", "report.json",
                                                                    "report.md", "sparsity.png"]
    report = json.loads((tmp_path / "D" / "report.json").read_text())
    assert f"{report['compressed']['sparsity']:.2%}" == "85.00%"
    assert (report["device"], report["processes"]) == ("cpu", 2)


@slow
def test_torchrun_switcher_alternates_and_tops_up_alike_on_both_processes(lenet5_checkpoint, tmp_path):
    # A switcher epoch, a task epoch, then the top-up epoch with frozen switches: three trainable sets in turn.
    result = torchrun("-m", "compressor", lenet5_checkpoint, "--method", "switcher", "--target", "95%", "--option",
                      "encoder_channels=4", "--option", "bottleneck_channels=4", "--epochs", "2", "--out", "D",
                      "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote D/") == 1 and "[rank1]" not in result.stderr
    report = json.loads((tmp_path / "D" / "report.json").read_text())
    assert report["switcher"]["topped_up"] and abs(report["switcher"]["final_sparsity"] - 0.95) < 1e-5
    assert (report["device"], report["processes"]) == ("cpu", 2)


@slow
def test_torchrun_train_writes_the_checkpoint_once(tmp_path):
    result = torchrun("-m", "compressor", "train", "lenet300_100", "--epochs", "1", "-o", "m.pt", "--no-progress",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote m.pt") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


@slow
@pytest.mark.parametrize("arguments, message", [
    (["--out", "D"], "compress: error: output folder D already exists; pass --force to replace it"),
    (["--out", "E", "--data", "npz:missing.npz"], "compress: error: npz:missing.npz: no such file"),
], ids=["main-process-only", "every-process"])
def test_a_refusal_stops_every_process_and_is_printed_once(arguments, message, lenet5_checkpoint, tmp_path):
    (tmp_path / "D").mkdir()
    result = torchrun("-m", "compressor", lenet5_checkpoint, "--target", "50%", *arguments, cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.count(message) == 1, result.stderr[-2000:]
    # torchrun then prints its own summary of the failed processes; the processes themselves print no traceback.
    assert "[rank0]" not in result.stderr and "[rank1]" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D"]
