"""Where a method trains: one process on the CPU, data-parallel processes under torchrun, and the GPU.

Each row is one real `compress` command on the digits data (a dense checkpoint trained first), run as a
subprocess: on one process with `--device cpu`, under `torchrun --nproc_per_node N` (gloo on the CPU), and with
`--device cuda` (and `torchrun` with nccl over the GPUs) where torch sees GPUs. The table gives the seconds of
the method stage (preparation, training, finishing) as report.json records them, the wall time of the command,
the counted sparsity or MACs removed, and the test accuracy after compression.

    python benchmarks/training_devices.py                                  # resnet20, budget and channel
    python benchmarks/training_devices.py --arch lenet5 --methods magnitude --epochs 2 --processes 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from compressor.tables import text_table

TARGETS = {"magnitude": "85%", "budget": "85%", "channel": "50%"}


def command(processes: int, arguments: list[str]) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "compressor", *arguments]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            "-m", "compressor", *arguments]


def run(folder: Path, checkpoint: Path, method: str, device: str, processes: int, epochs: int) -> list[str]:
    out = folder / f"{method}-{device}-{processes}"
    started = time.perf_counter()
    result = subprocess.run(command(processes, [str(checkpoint), "--method", method, "--target", TARGETS[method],
                                                "--epochs", str(epochs), "--device", device, "--out", str(out),
                                                "--no-progress"]), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        reason = next((line for line in result.stderr.splitlines() if "error:" in line), "failed")
        return [method, device, str(processes), "-", f"{wall:.1f}", "-", reason[:60]]
    report = json.loads((out / "report.json").read_text())
    removed = (f"{report['structure']['macs_removed']:.2%} MACs" if report.get("structure")
               else f"{report['compressed']['sparsity']:.2%} sparse")
    return [method, report["device"], str(report["processes"]), f"{report['seconds']['method']:.1f}", f"{wall:.1f}",
            removed, f"{report['compressed']['accuracy']:.2%}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--methods", default="budget,channel")
    parser.add_argument("--epochs", type=int, default=3, help="method epochs (default 3)")
    parser.add_argument("--processes", type=int, default=2, help="torchrun processes on the CPU (default 2)")
    args = parser.parse_args()

    settings = [("cpu", 1), ("cpu", args.processes)]
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        settings.append(("cuda", 1))
        if gpus > 1:
            settings.append(("cuda", gpus))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        checkpoint = folder / f"{args.arch}.pt"
        subprocess.run([sys.executable, "-m", "compressor", "train", args.arch, "--epochs", "5", "-o", str(checkpoint),
                        "--no-progress"], check=True, capture_output=True)
        rows = [run(folder, checkpoint, method, device, processes, args.epochs)
                for method in args.methods.split(",") for device, processes in settings]
    print(f"{args.arch} on digits, {args.epochs} method epochs; torch {torch.__version__}, {gpus} GPU(s)")
    print(text_table(["method", "device", "processes", "method s", "wall s", "removed", "accuracy"], rows,
                     left_columns=2))


if __name__ == "__main__":
    main()
