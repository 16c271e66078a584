"""The `compress` command: a thin layer over the Python API in `compressor.api`.

`compress MODEL --method NAME --target T ...` compresses a model; the verbs `train`, `bench`, `deploy` and
`zoo` train a dense zoo model, time a model on every runtime backend, write a deploy bundle for a device, and
list the zoo. A mistake in the input (a missing or untrusted file,
a bad option, data that doesn't fit) is one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import signal
import sys
import threading
from typing import Sequence

from compressor.errors import CompressorError, printable

# The verbs import the API (and with it torch) only when they run, so `compress zoo --help` and usage errors
# of `train` answer at once; the compress parser reads the method registry for its flags, and the bench and
# deploy parsers read the runtime's backend and target names.
VERBS = ("train", "bench", "deploy", "zoo")
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's stop, torchrun stopping the others when one process fails), handled as Ctrl-C
    is: the outputs clean up after themselves and the resume state stays."""


def _terminate(signum, frame) -> None:
    raise _Terminated

COMPRESS_EXAMPLES = """\
examples:
  compress train lenet5 --epochs 10 -o lenet5.pt
  compress lenet5.pt --method magnitude --target 85% --out lenet5-85
  compress lenet5.pt --method magnitude --pattern 2:4 --out lenet5-24
  compress lenet5.pt --method budget --target 85% --epochs 10 --out lenet5-budget
  compress lenet5.pt --method budget --target 85% --flops-target 80% --budget-loss hinge
  compress train lenet5 --loss bsp --optimizer adam --weight-decay 4e-4 -o lenet5-llr.pt
  compress lenet5-llr.pt --method snapshot --option sweep=10 --out lenet5-snap
  compress weights.pth --arch resnet20 --method magnitude --target 0.9 --data cifar10:./cifar-10-batches-py
  compress bench lenet5-85 --baseline lenet5.pt --batch 1,32 --json bench.json --plot bench.png
  compress deploy lenet5-24/model.onnx --target jetson-orin -o lenet5-orin
  compress zoo

other verbs: train (train a dense zoo model), bench (time a model on every runtime backend), deploy (write a
TensorRT deploy bundle for a device), zoo (list architectures).
Run `compress VERB --help` for their options.
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2, like every other input error."""

    def error(self, message: str):
        raise _UsageError(f"{self.prog}: {message}")


class _UsageError(Exception):
    pass


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="digits", metavar="SPEC",
                        help="digits (default: scikit-learn's real handwritten digits), npz:PATH, cifar10:DIR, "
                             "imagefolder:DIR or package.module:function; e.g. --data cifar10:./cifar-10-batches-py")
    parser.add_argument("--seed", type=int, default=0, help="random seed for training and data order (default 0)")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from its last finished epoch")
    parser.add_argument("--device", default="auto", metavar="DEVICE",
                        help="where to train: auto (default: the GPU when torch sees one), cpu, cuda or cuda:N; "
                             "under torchrun each process takes the GPU of its local rank")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _compress_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="compress", description="Compress a trained PyTorch model into a verified sparse ONNX "
                     "model, with a report of what changed and measured latency.",
                     epilog=COMPRESS_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL",
                        help="checkpoint written by `compress train`, a state_dict (with --arch), a TorchScript "
                             "archive, or a pickled nn.Module (with --trust-model); e.g. lenet5.pt")
    parser.add_argument("--method", default="magnitude", help="compression method (default magnitude); e.g. --method magnitude")
    parser.add_argument("--target", help="sparsity to reach, as 85%% or 0.85 (structured methods: fraction of MACs "
                                         "to remove); e.g. --target 85%%")
    parser.add_argument("--pattern", default="unstructured", choices=["unstructured", "2:4"],
                        help="unstructured (default) or 2:4 (TensorRT's sparse layout); e.g. --pattern 2:4")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a method hyper-parameter; e.g. --option scope=layer or --option lambda_params=5")
    _add_method_flags(parser)
    parser.add_argument("--epochs", type=int,
                        help="training epochs of the method: masked fine-tuning for magnitude (default 5), threshold "
                             "learning then masked fine-tuning for budget (default 10)")
    parser.add_argument("--lr", type=float,
                        help="learning rate of the method's training (default: the method's, e.g. magnitude 0.01, "
                             "budget 0.05; under Adam 1e-3)")
    _add_training_options(parser, fine_tune=True)
    parser.add_argument("--out", default="compressed", metavar="DIR",
                        help="output folder (default ./compressed); e.g. --out lenet5-85")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    _add_model_loading_options(parser)
    parser.add_argument("--bench-batch", type=int, default=1, help="batch size for the latency comparison (default 1)")
    parser.add_argument("--threads", type=int, help="onnxruntime threads for the latency comparison")
    _add_data_options(parser)
    return parser


def _method_flags() -> dict[str, object]:
    """Every flag a method's Config exposes, by flag; a flag may serve several methods' same-named field."""
    from compressor.methods import list_methods
    from compressor.methods.base import method_config_class
    from compressor.options import flag_fields

    return {f.metadata["flag"]: f for name in list_methods() for f in flag_fields(method_config_class(name))}


def _flag_dest(flag: str) -> str:
    return "method_flag_" + flag.lstrip("-").replace("-", "_")


def _add_method_flags(parser: argparse.ArgumentParser) -> None:
    for flag, field in _method_flags().items():
        parser.add_argument(flag, dest=_flag_dest(flag), metavar="VALUE", help=field.metadata["help"])


def _flag_options(args: argparse.Namespace) -> dict:
    """Method options given through their own flags, parsed by the field's parser.

    A flag is only accepted for a method whose Config declares it: two methods may share a field name
    (`scope`), and one method's flag must not quietly set the other's option.
    """
    from compressor.methods import list_methods
    from compressor.methods.base import method_config_class
    from compressor.options import flag_fields

    own = {f.metadata["flag"]: f for f in flag_fields(method_config_class(args.method))}
    options = {}
    for flag in _method_flags():
        text = getattr(args, _flag_dest(flag))
        if text is None:
            continue
        if flag not in own:
            owners = [name for name in list_methods()
                      if any(f.metadata["flag"] == flag for f in flag_fields(method_config_class(name)))]
            raise CompressorError(f"{flag} is an option of method {' and '.join(owners)}, not {args.method}")
        parse = own[flag].metadata["parse"]
        options[own[flag].name] = parse(text) if parse else text
    return options


def _train_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="compress train", description="Train a dense zoo model and write a checkpoint.",
                     epilog="example:\n  compress train resnet20 --data digits --epochs 15 -o resnet20.pt",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arch", metavar="ARCH", help="zoo architecture (see `compress zoo`); e.g. lenet5")
    parser.add_argument("-o", "--out", required=True, metavar="PATH", help="checkpoint to write; e.g. -o lenet5.pt")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default 0.05 under SGD, 1e-3 under Adam)")
    _add_training_options(parser, fine_tune=False)
    parser.add_argument("--in-channels", type=int, help="input channels, if not the architecture's own")
    parser.add_argument("--force", action="store_true", help="replace an existing checkpoint")
    _add_data_options(parser)
    return parser


def _add_training_options(parser: argparse.ArgumentParser, fine_tune: bool) -> None:
    recorded = " (default: the one the checkpoint records, else {})" if fine_tune else " (default {})"
    parser.add_argument("--loss", choices=["ce", "bsp"], default=None if fine_tune else "ce",
                        help="task loss: ce (softmax cross-entropy) or bsp (bipolar softplus on log-likelihood-ratio "
                             "outputs)" + recorded.format("ce"))
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default=None if fine_tune else "sgd",
                        help="optimizer of the weights: sgd (Nesterov momentum) or adam" + recorded.format("sgd"))
    parser.add_argument("--weight-decay", type=float, default=5e-4, metavar="W", help="weight decay (default 5e-4)")
    parser.add_argument("--wd-mode", choices=["l2", "decoupled"], default="l2",
                        help="under Adam: l2 adds the decay to the gradient (Adam, default), decoupled shrinks the "
                             "weights apart (AdamW)")


def _add_model_loading_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", help="zoo architecture of a bare state_dict; e.g. --arch resnet20")
    parser.add_argument("--trust-model", action="store_true",
                        help="allow loading a pickled nn.Module (unpickling runs code from the file)")
    parser.add_argument("--input-shape", metavar="C,H,W", help="input shape of a model outside the zoo; e.g. 3,32,32")


def _bench_parser() -> argparse.ArgumentParser:
    from compressor.runtime.backends import BACKENDS

    parser = _Parser(prog="compress bench",
                     description="Time a model on every runtime backend this machine has (median, p90, throughput), "
                                 "optionally against its dense baseline; backends that cannot run are listed with the "
                                 "reason.",
                     epilog="examples:\n  compress bench out/model.onnx --batch 1,32 --threads 2\n"
                            "  compress bench out --baseline resnet20.pt --backend ort-cpu,torch --json b.json "
                            "--plot b.png\n  compress bench out --backend torch-24,torch --precision fp16",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL",
                        help="an ONNX file, a checkpoint, or a compress output folder (torch backends need model.pt)")
    parser.add_argument("--baseline", metavar="DENSE", help="the dense model to compare with (same kinds as MODEL)")
    parser.add_argument("--backend", metavar="LIST",
                        help=f"comma-separated backends from {', '.join(BACKENDS)}, or all (default: every backend "
                             "that can run here)")
    parser.add_argument("--batch", default="1", help="comma-separated batch sizes (default 1); e.g. --batch 1,32")
    parser.add_argument("--precision", default="fp16", choices=["fp32", "tf32", "fp16"],
                        help="arithmetic of the GPU backends (default fp16); CPU backends always run fp32")
    parser.add_argument("--threads", type=int, help="CPU threads of ort-cpu and torch on the CPU (default: the "
                                                    "library's choice)")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per batch size (default 50, at least 50)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed warm-up runs (default 10)")
    parser.add_argument("--json", metavar="PATH", help="write every measurement, versions and machine as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG chart of latency per backend")
    parser.add_argument("--force", action="store_true", help="replace existing --json/--plot files")
    _add_model_loading_options(parser)
    return parser


def _deploy_parser() -> argparse.ArgumentParser:
    from compressor.runtime.deploy import BUNDLE_PRECISIONS, TARGETS

    parser = _Parser(prog="compress deploy",
                     description="Write a deploy bundle for a device: the ONNX and its FP16 variant, build_engine.sh "
                                 "(trtexec, 2:4 sparse weights when the model has them), bench.sh, verify.py, "
                                 "manifest.json and a README. The engine is built on the device.",
                     epilog="example:\n  compress deploy out/model.onnx --target jetson-orin -o out-orin",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("onnx", metavar="MODEL.onnx", help="the ONNX file to deploy")
    parser.add_argument("--target", required=True, choices=list(TARGETS), help="the device the bundle is for")
    parser.add_argument("-o", "--out", required=True, metavar="DIR", help="bundle folder to write")
    parser.add_argument("--precision", default="fp16", choices=list(BUNDLE_PRECISIONS),
                        help="engine precision (default fp16)")
    parser.add_argument("--batch", type=int, default=1, help="batch size the engine is built for (default 1)")
    parser.add_argument("--dla-core", type=int, metavar="N", help="run on DLA core N, with GPU fallback (Jetson only)")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle folder")
    return parser


def _zoo_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="compress zoo", description="List the zoo's architectures with their size.",
                     epilog="example:\n  compress zoo 'resnet*'", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pattern", nargs="?", default="*", help="shell-style name filter (default *)")
    return parser


def _parse_options(items: Sequence[str]) -> dict[str, str]:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CompressorError(f"--option takes KEY=VALUE, not {item!r}")
        options[key] = value
    return options


def _quiet_onnxruntime() -> None:
    """Only onnxruntime's errors reach the terminal: its warnings narrate graph optimizations (in our sessions
    and in the one onnx-graphsurgeon opens to fold constants), which nobody running the command can act on."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)


def _run_compress(args: argparse.Namespace) -> None:
    from compressor.api import compress
    from compressor.loading import parse_input_shape
    from compressor.methods.base import typed_options

    _quiet_onnxruntime()
    from compressor.report import plot_files, summary_text

    report = compress(
        args.model, args.method, args.target, pattern=args.pattern, data=args.data, epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, out=args.out, force=args.force, resume=args.resume, arch=args.arch,
        trust_model=args.trust_model, input_shape=parse_input_shape(args.input_shape) if args.input_shape else None,
        seed=args.seed, bench_batch=args.bench_batch, threads=args.threads,
        method_options={**typed_options(args.method, _parse_options(args.option)), **_flag_options(args)},
        progress=not args.no_progress, device=args.device, loss=args.loss, optimizer=args.optimizer,
        weight_decay=args.weight_decay, wd_mode=args.wd_mode)
    if report is None:  # a process of a data-parallel run that writes nothing
        return
    print(summary_text(report))
    print(f"\nwrote {printable(args.out)}/: model.onnx, model.pt, report.json, report.md, {', '.join(plot_files(report))} "
          f"(ONNX vs torch max |diff| {report.onnx.max_abs_diff:.2g})")


def _run_train(args: argparse.Namespace) -> None:
    from compressor.api import train_model

    outcome = train_model(args.arch, args.out, data=args.data, epochs=args.epochs, seed=args.seed, lr=args.lr,
                          batch_size=args.batch_size, in_channels=args.in_channels, force=args.force,
                          resume=args.resume, progress=not args.no_progress, device=args.device, loss=args.loss,
                          optimizer=args.optimizer, weight_decay=args.weight_decay, wd_mode=args.wd_mode)
    if outcome.path is None:  # a process of a data-parallel run that writes nothing
        return
    print(f"{args.arch}: test accuracy {outcome.result.test_accuracy:.2%} after {args.epochs} epochs; "
          f"wrote {printable(outcome.path)}")


def _run_bench(args: argparse.Namespace) -> None:
    from compressor.latency import (compare_backends, comparison_outputs, comparison_table, parse_backends,
                                    write_comparison)
    from compressor.loading import parse_input_shape
    from compressor.verify import VerificationError
    from compressor.runtime.bench import parse_batch_sizes

    _quiet_onnxruntime()
    if args.runs < 50:
        raise CompressorError(f"--runs must be at least 50 for a stable median and p90, got {args.runs}")
    if args.warmup < 0:
        raise CompressorError(f"--warmup must be 0 or more, got {args.warmup}")
    if args.threads is not None and args.threads < 1:
        raise CompressorError(f"--threads must be a positive integer, got {args.threads}")
    with comparison_outputs(args.json, args.plot, args.force, [args.model, args.baseline]) as (document, chart):
        comparison = compare_backends(
            args.model, args.baseline, parse_backends(args.backend), parse_batch_sizes(args.batch),
            precision=args.precision, threads=args.threads, runs=args.runs, warmup=args.warmup, arch=args.arch,
            trust_model=args.trust_model,
            input_shape=parse_input_shape(args.input_shape) if args.input_shape else None)
        print(comparison_table(comparison))
        write_comparison(comparison, document and document.staging, chart and chart.staging)
        written = [output.commit() for output in (document, chart) if output is not None]
    if written:
        print(f"\nwrote {', '.join(printable(path) for path in written)}")
    wrong = comparison.disagreements()
    if wrong:
        raise VerificationError(f"{len(wrong)} backend run(s) disagree with onnxruntime FP32; first: {wrong[0]}")


def _run_deploy(args: argparse.Namespace) -> None:
    from compressor.runtime.deploy import build_bundle

    _quiet_onnxruntime()
    bundle = build_bundle(args.onnx, args.target, args.out, precision=args.precision, batch=args.batch,
                          dla_core=args.dla_core, force=args.force)
    print(bundle.summary())


def _run_zoo(args: argparse.Namespace) -> None:
    from compressor.models import describe_models
    from compressor.tables import text_table

    rows = [[s.name, "x".join(map(str, s.input_shape)), f"{s.params:,}", f"{s.macs:,}"]
            for s in describe_models(args.pattern)]
    print(text_table(["name", "input", "params", "MACs"], rows, left_columns=2))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # A file name with non-UTF-8 bytes must not fail a run when it is printed: escape what cannot be shown.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("onnxscript", "onnx_ir", "onnx_graphsurgeon", "passes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # torchrun's RANK, read without importing torch (which the distributed module needs) so that usage errors
    # answer at once. The other processes of a torchrun run stay quiet: the main one reports for all of them.
    main_process = int(os.environ.get("RANK", "0")) == 0
    if not main_process:
        logging.getLogger().setLevel(logging.WARNING)
    verb = argv[0] if argv and argv[0] in VERBS else None
    parsers = {"train": (_train_parser, _run_train), "bench": (_bench_parser, _run_bench),
               "deploy": (_deploy_parser, _run_deploy), "zoo": (_zoo_parser, _run_zoo),
               None: (_compress_parser, _run_compress)}
    make_parser, run = parsers[verb]
    # Signal handlers belong to the main thread; main() called from another thread keeps Python's default.
    previous = (signal.signal(signal.SIGTERM, _terminate)
                if threading.current_thread() is threading.main_thread() else None)
    try:
        args = make_parser().parse_args(argv[1:] if verb else argv)
        run(args)
    except (CompressorError, _UsageError) as error:
        if error.__cause__ is not None:
            logging.getLogger(__name__).debug("cause", exc_info=error.__cause__)
        # The main process reports for all: a failure of another process reaches it through `together()`.
        if main_process:
            print(printable(error) if isinstance(error, _UsageError) else f"compress: error: {printable(error)}",
                  file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        # Whatever the checks before the work could not foresee (a disk that fills, a folder removed under
        # the run) is the machine's state, not a bug: one line, and the outputs have cleaned up after it.
        where = f" {error.filename}" if error.filename is not None else ""
        print(f"compress: error:{printable(where)} {error.strerror or error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, _Terminated)
        if main_process:
            print(f"compress: {'terminated' if terminated else 'interrupted'}; run the same command with --resume "
                  "to continue", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if "compressor.distributed" in sys.modules:
            sys.modules["compressor.distributed"].stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
