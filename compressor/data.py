"""Training and test data for compression runs, served at the model's input shape.

`load_data(spec, input_shape)` turns a data spec into a `DataBundle` of train/test DataLoaders. The specs are
`digits` (scikit-learn's 1797 real 8x8 handwritten digits, shipped with the library, so every run has real data
without a download), `npz:PATH`, `cifar10:DIR` (the python-pickle batches), `imagefolder:DIR` (DIR/train/<class>/
and DIR/val/<class>/) and `package.module:function` (your own loaders). Every built-in form is normalised with
per-channel mean and standard deviation computed on its train split only, so the test split never leaks into
preprocessing; a `module:function` form is served exactly as your loaders return it. Digits are resized to the
model's H×W (bilinear) and replicated to its channel count so any model in the zoo can train on them; npz and
CIFAR-10 samples must already have the model's shape; image folders are resized because their files come in
arbitrary sizes. Anything wrong with the spec or the data raises `CompressorError` with a one-line explanation.
"""

from __future__ import annotations

import codecs
import importlib
import logging
import pickle
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from compressor.errors import CompressorError
from compressor.modules import model_device
from compressor.paths import is_dir, is_file

logger = logging.getLogger(__name__)

Shape = tuple[int, int, int]

_DIGITS_TEST_FRACTION = 0.2
# Fixed, not the run's seed: the digits test split must be the same for every run so accuracies compare.
_DIGITS_SPLIT_SEED = 0
# Digits are resized once up front while the result stays this small; beyond it (e.g. 224x224) each sample is
# resized when it is read, so the dataset never holds hundreds of MB of upsampled copies.
_PRESIZE_LIMIT_BYTES = 64 * 2**20
# Train statistics are accumulated in chunks of about this many values to bound memory at large input sizes.
_STATS_CHUNK_VALUES = 2**22
# A channel that is constant on the train split would divide by zero; this floor leaves it at zero instead.
_MIN_STD = 1e-6

_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_BATCH = "test_batch"
_CIFAR_SHAPE = (3, 32, 32)
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_MODULE_FUNCTION = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_SPEC_FORMS = "digits, npz:PATH, cifar10:DIR, imagefolder:DIR or package.module:function"


@dataclass
class DataBundle:
    """Train and test loaders plus what the rest of the pipeline needs to know about them."""

    train: DataLoader
    test: DataLoader
    num_classes: int  # classes in the data (labels are 0..num_classes-1), not the model's output count
    name: str  # the spec it came from, e.g. "digits" or "npz:/data/mnist.npz"

    def real_batch(self, size: int) -> torch.Tensor:
        """The first `size` test images (fewer when the test split is smaller), as one batch: a real batch to
        check an export on."""
        images = []
        for batch, _ in self.test:
            images.append(batch)
            if sum(len(b) for b in images) >= size:
                break
        return torch.cat(images)[:size]

    def check_fits(self, model: nn.Module) -> None:
        """Refuse, in one line, data whose images the model cannot take."""
        images, _ = next(iter(self.test))
        try:
            with torch.no_grad():
                model.eval()(images[:2].to(model_device(model)))
        except Exception as error:  # the model's own layers decide what a misfit raises
            raise CompressorError(f"data {self.name} does not fit the model: "
                                  f"{' '.join(str(error).split())[:200]}") from None


class _Split(NamedTuple):
    """A loaded data source before normalisation: images NCHW (uint8 0..255 or float), labels int64."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int


class _ImageDataset(Dataset):
    """Images kept in their compact stored form and turned into normalised model-shaped samples when read.

    Storing uint8 (CIFAR-10 is 150 MB that way, 600 MB as float) or digits at 8x8 keeps memory small; the
    per-sample conversion is cheap next to a training step.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, shape: Shape, mean: torch.Tensor, std: torch.Tensor):
        self.images = images
        self.labels = labels
        self.shape = shape
        self.mean = mean.view(-1, 1, 1)
        self.std = std.view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = _as_model_input(self.images[index : index + 1], self.shape)[0]
        return (image - self.mean) / self.std, self.labels[index]


def load_data(
    spec: str,
    input_shape: tuple[int, int, int],
    batch_size: int = 64,
    seed: int = 0,
    num_classes: int | None = None,
) -> DataBundle:
    """Load the data named by `spec` as loaders of samples shaped `input_shape` (C, H, W).

    The train loader shuffles with a generator seeded from `seed`; the test loader keeps file order.
    `num_classes` is the model's output count: data with labels beyond it is refused.
    """
    shape = _check_input_shape(input_shape)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise CompressorError(f"batch size must be a positive integer, got {batch_size!r}")
    form, _, argument = spec.partition(":")
    if spec == "digits":
        split = _load_digits(shape)
    elif form in _FILE_SOURCES:
        if not argument:
            raise CompressorError(f"data spec {spec!r} has no path; expected {form}:PATH")
        split = _FILE_SOURCES[form](spec, Path(argument).expanduser(), shape)
    elif _MODULE_FUNCTION.fullmatch(spec):
        return _load_function(spec, shape, num_classes)
    else:
        raise CompressorError(f"unknown data spec {spec!r}; expected {_SPEC_FORMS}")
    _check_class_count(spec, split.num_classes, num_classes)
    logger.debug(
        "%s: %d train / %d test samples, %d classes",
        spec, len(split.train_labels), len(split.test_labels), split.num_classes,
    )
    return _bundle(spec, split, shape, batch_size, seed)


def data_path(spec: str) -> Path | None:
    """The file or folder a data spec reads (`npz:PATH` → PATH), or None for the built-in and function forms."""
    form, _, argument = spec.partition(":")
    return Path(argument).expanduser() if form in _FILE_SOURCES and argument else None


def _check_input_shape(input_shape: tuple[int, int, int]) -> Shape:
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise CompressorError(f"input shape must be three positive integers C, H, W, got {input_shape!r}")
    return shape


def _format_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def _check_sample_shape(name: str, sample_shape: tuple[int, ...], shape: Shape) -> None:
    if tuple(sample_shape) != shape:
        raise CompressorError(
            f"{name}: samples are {_format_shape(sample_shape)} but the model takes {_format_shape(shape)}"
        )


def _check_class_count(name: str, count: int, num_classes: int | None) -> None:
    if num_classes is not None and count > num_classes:
        raise CompressorError(
            f"{name}: labels go up to {count - 1} ({count} classes) but the model has {num_classes} outputs"
        )


def _label_count(name: str, *labels: torch.Tensor) -> int:
    """Number of classes implied by class-index labels; negative labels are a data error."""
    present = [y for y in labels if y.numel()]
    if not present:
        raise CompressorError(f"{name}: the data has no samples")
    smallest = min(int(y.min()) for y in present)
    if smallest < 0:
        raise CompressorError(f"{name}: labels must be class indices 0..K-1 but one is {smallest}")
    return max(int(y.max()) for y in present) + 1


def _as_model_input(images: torch.Tensor, shape: Shape) -> torch.Tensor:
    """Float images at the model's H×W and channel count; single-channel images are replicated."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    if tuple(x.shape[-2:]) != shape[1:]:
        x = F.interpolate(x, size=shape[1:], mode="bilinear", align_corners=False)
    return x.expand(-1, shape[0], -1, -1)


def _channel_stats(images: torch.Tensor, shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of `images` as the model will see them (resized, channels replicated).

    Computed on the stored channels and then replicated, since copies of a channel share its statistics; chunk
    sums are float32 (pairwise, accurate) and the running totals float64.
    """
    stored_shape = (images.shape[1], shape[1], shape[2])
    chunk = max(1, _STATS_CHUNK_VALUES // (stored_shape[0] * shape[1] * shape[2]))
    total = torch.zeros(stored_shape[0], dtype=torch.float64)
    squares = torch.zeros(stored_shape[0], dtype=torch.float64)
    for start in range(0, len(images), chunk):
        x = _as_model_input(images[start : start + chunk], stored_shape)
        total += x.sum(dim=(0, 2, 3)).double()
        squares += x.square().sum(dim=(0, 2, 3)).double()
    count = len(images) * shape[1] * shape[2]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt().clamp_min(_MIN_STD)
    return mean.float().expand(shape[0]).clone(), std.float().expand(shape[0]).clone()


def _bundle(name: str, split: _Split, shape: Shape, batch_size: int, seed: int) -> DataBundle:
    mean, std = _channel_stats(split.train_images, shape)
    train = _ImageDataset(split.train_images, split.train_labels, shape, mean, std)
    test = _ImageDataset(split.test_images, split.test_labels, shape, mean, std)
    generator = torch.Generator().manual_seed(seed)
    return DataBundle(
        train=DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator, num_workers=0),
        test=DataLoader(test, batch_size=batch_size, shuffle=False, num_workers=0),
        num_classes=split.num_classes,
        name=name,
    )


# --- digits -------------------------------------------------------------------------------------------------


def _load_digits(shape: Shape) -> _Split:
    # Imported here because scikit-learn is slow to import and only this form needs it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    pixels, labels = load_digits(return_X_y=True)
    images = torch.from_numpy(pixels / 16.0).float().view(-1, 1, 8, 8)
    train_index, test_index = train_test_split(
        np.arange(len(labels)), test_size=_DIGITS_TEST_FRACTION, stratify=labels, random_state=_DIGITS_SPLIT_SEED
    )
    if len(images) * shape[1] * shape[2] * 4 <= _PRESIZE_LIMIT_BYTES:
        images = _as_model_input(images, (1, shape[1], shape[2]))
    labels = torch.from_numpy(labels).long()
    return _Split(images[train_index], labels[train_index], images[test_index], labels[test_index], 10)


# --- npz ----------------------------------------------------------------------------------------------------


def _load_npz(name: str, path: Path, shape: Shape) -> _Split:
    if not is_file(path, "data file"):
        raise CompressorError(f"{name}: no such file")
    # np.load would try to unpickle a non-zip file and report it as "pickled data"; say what is really wrong.
    if not zipfile.is_zipfile(path):
        raise CompressorError(f"{name}: not an .npz archive; expected one with arrays {', '.join(_NPZ_KEYS)}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in _NPZ_KEYS if key not in archive.files]
            if missing:
                raise CompressorError(
                    f"{name}: missing array(s) {', '.join(missing)}; expected {', '.join(_NPZ_KEYS)}"
                )
            arrays = {key: archive[key] for key in _NPZ_KEYS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise CompressorError(f"{name}: cannot read the archive ({exc})") from exc
    # NpzFile hands back raw bytes for a member that isn't in .npy format.
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray):
            raise CompressorError(f"{name}: cannot read the archive ({key} is not an .npy array)")
    train_images = _npz_images(name, "x_train", arrays["x_train"], shape)
    test_images = _npz_images(name, "x_test", arrays["x_test"], shape)
    train_labels = _npz_labels(name, "y_train", arrays["y_train"], len(train_images))
    test_labels = _npz_labels(name, "y_test", arrays["y_test"], len(test_images))
    return _Split(train_images, train_labels, test_images, test_labels, _label_count(name, train_labels, test_labels))


def _npz_images(name: str, key: str, x: np.ndarray, shape: Shape) -> torch.Tensor:
    """NCHW tensor from N×H×W, NCHW or NHWC (last axis 1 or 3 and the second axis not), uint8 or float."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[3] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise CompressorError(f"{name}: {key} has shape {x.shape}; expected images as NCHW, NHWC or NHW")
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise CompressorError(f"{name}: {key} has dtype {x.dtype}; expected uint8 (0..255) or float")
    if len(x) == 0:
        raise CompressorError(f"{name}: {key} has no samples")
    _check_sample_shape(name, x.shape[1:], shape)
    return torch.from_numpy(np.ascontiguousarray(x if x.dtype == np.uint8 else x.astype(np.float32, copy=False)))


def _npz_labels(name: str, key: str, y: np.ndarray, count: int) -> torch.Tensor:
    if y.ndim == 2 and y.shape[1] == 1:  # Keras-style column of labels
        y = y[:, 0]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise CompressorError(
            f"{name}: {key} has shape {y.shape} and dtype {y.dtype}; expected 1-D integer class labels"
        )
    if len(y) != count:
        raise CompressorError(f"{name}: {key} has {len(y)} labels but there are {count} images")
    return torch.from_numpy(y.astype(np.int64))


# --- cifar10 ------------------------------------------------------------------------------------------------


def _numpy_core(module: str):
    # numpy 2 moved numpy.core to numpy._core; pickles from either version name their own path.
    try:
        return importlib.import_module(f"numpy._core.{module}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{module}")


def _allowed_pickle_globals() -> dict[tuple[str, str], object]:
    """The callables a pickled numpy array needs, under the names numpy 1 and numpy 2 write."""
    multiarray, numeric = _numpy_core("multiarray"), _numpy_core("numeric")
    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Protocol 0-2 pickles written by Python 3 store bytes as _codecs.encode(text, "latin1").
        ("_codecs", "encode"): codecs.encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct  # arrays, protocol < 5
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar  # numpy scalars, e.g. np.int64 labels
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # arrays, protocol 5
    return allowed


_ALLOWED_PICKLE_GLOBALS = _allowed_pickle_globals()


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a callable outside the allow-list."""


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays inside builtin containers and refuses everything else.

    CIFAR-10 ships as pickles, and plain unpickling calls whatever callable the file names; restricting
    `find_class` to numpy's array constructors means a tampered batch fails to load instead of running code.
    """

    def find_class(self, module: str, name: str):
        allowed = _ALLOWED_PICKLE_GLOBALS.get((module, name))
        if allowed is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return allowed


def _load_cifar10(name: str, directory: Path, shape: Shape) -> _Split:
    if shape != _CIFAR_SHAPE:
        raise CompressorError(
            f"{name}: CIFAR-10 samples are {_format_shape(_CIFAR_SHAPE)} but the model takes {_format_shape(shape)}"
        )
    if not is_dir(directory, "data folder"):
        raise CompressorError(f"{name}: no such directory")
    expected = (*_CIFAR_TRAIN_BATCHES, _CIFAR_TEST_BATCH)
    missing = [batch for batch in expected if not is_file(directory / batch, "data file")]
    if missing:
        raise CompressorError(
            f"{name}: missing {', '.join(missing)}; expected the python-version batches data_batch_1..5 and test_batch"
        )
    train = [_read_cifar_batch(name, directory / batch) for batch in _CIFAR_TRAIN_BATCHES]
    test_images, test_labels = _read_cifar_batch(name, directory / _CIFAR_TEST_BATCH)
    train_images = torch.cat([images for images, _ in train])
    train_labels = torch.cat([labels for _, labels in train])
    return _Split(train_images, train_labels, test_images, test_labels, _label_count(name, train_labels, test_labels))


def _read_cifar_batch(name: str, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with path.open("rb") as file:
            batch = _ArrayOnlyUnpickler(file, encoding="bytes").load()
    except _RefusedGlobal as exc:
        raise CompressorError(
            f"{name}: refused to load {path.name}: it calls {exc}, but a CIFAR-10 batch may only hold numpy arrays "
            "and builtin containers"
        ) from exc
    except Exception as exc:  # only allow-listed constructors run, so any failure here means a damaged file
        raise CompressorError(
            f"{name}: {path.name} is not a readable CIFAR-10 batch ({type(exc).__name__}: {exc})"
        ) from exc
    expected = 'a dict with b"data" (uint8 N x 3072) and b"labels" (N ints)'
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise CompressorError(f"{name}: {path.name} is not a CIFAR-10 batch; expected {expected}")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3072
        or labels.shape != (len(data),)
        or not np.issubdtype(labels.dtype, np.integer)
    ):
        raise CompressorError(f"{name}: {path.name} has unexpected contents; expected {expected}")
    return torch.from_numpy(data.reshape(-1, *_CIFAR_SHAPE).copy()), torch.from_numpy(labels.astype(np.int64))


# --- imagefolder --------------------------------------------------------------------------------------------


def _load_imagefolder(name: str, root: Path, shape: Shape) -> _Split:
    if shape[0] not in (1, 3):
        raise CompressorError(
            f"{name}: images are read as grayscale (1 channel) or RGB (3 channels) "
            f"but the model takes {shape[0]} channels"
        )
    layout = f"{root}/train/<class>/*.png and {root}/val/<class>/*.png (or .jpg, .jpeg, .bmp)"
    for split in ("train", "val"):
        if not is_dir(root / split, "data folder"):
            raise CompressorError(f"{name}: no {split}/ folder; expected {layout}")
    classes = sorted(entry.name for entry in (root / "train").iterdir() if entry.is_dir())
    val_classes = sorted(entry.name for entry in (root / "val").iterdir() if entry.is_dir())
    if not classes:
        raise CompressorError(f"{name}: train/ has no class folders; expected {layout}")
    if classes != val_classes:
        only_train = sorted(set(classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(classes))
        raise CompressorError(
            f"{name}: train/ and val/ must have the same class folders (only in train: {only_train or 'none'}, "
            f"only in val: {only_val or 'none'})"
        )
    files = {split: _class_images(root / split, classes) for split in ("train", "val")}
    # A class without images in one split would silently never be trained on, or never be tested.
    empty = [f"{split}/{class_name}" for split, per_class in files.items()
             for class_name, paths in zip(classes, per_class) if not paths]
    if empty:
        folders, have = ("class folder", "has") if len(empty) == 1 else ("class folders", "have")
        raise CompressorError(f"{name}: {folders} {', '.join(empty)} {have} no {', '.join(_IMAGE_SUFFIXES)} images")
    train_images, train_labels = _read_image_split(name, files["train"], shape)
    test_images, test_labels = _read_image_split(name, files["val"], shape)
    return _Split(train_images, train_labels, test_images, test_labels, len(classes))


def _class_images(split_dir: Path, classes: list[str]) -> list[list[Path]]:
    """The image files of each class folder of one split, in class order, each sorted by name."""
    return [
        [path for path in sorted((split_dir / class_name).iterdir())
         if path.is_file() and path.suffix.lower() in _IMAGE_SUFFIXES]
        for class_name in classes
    ]


def _read_image_split(name: str, per_class: list[list[Path]], shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 NCHW at the model's size, and their labels (the index of their class)."""
    images = [_read_image(name, path, shape) for paths in per_class for path in paths]
    labels = [label for label, paths in enumerate(per_class) for _ in paths]
    stacked = np.stack(images).reshape(len(images), shape[1], shape[2], shape[0])
    return torch.from_numpy(stacked.transpose(0, 3, 1, 2).copy()), torch.tensor(labels, dtype=torch.int64)


def _read_image(name: str, path: Path, shape: Shape) -> np.ndarray:
    """One image as uint8 H×W(×C) at the model's size; folders hold arbitrary sizes, so resizing is expected."""
    try:
        with Image.open(path) as image:
            converted = image.convert("L" if shape[0] == 1 else "RGB")
            return np.asarray(converted.resize((shape[2], shape[1]), Image.Resampling.BILINEAR))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise CompressorError(f"{name}: cannot read image {path} ({exc})") from exc


_FILE_SOURCES = {"npz": _load_npz, "cifar10": _load_cifar10, "imagefolder": _load_imagefolder}


# --- package.module:function --------------------------------------------------------------------------------


def _load_function(spec: str, shape: Shape, num_classes: int | None) -> DataBundle:
    """Call the user's loader factory; its loaders are used as returned (their own transforms and shuffling)."""
    module_name, function_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may fail to import in any way; report it as their input
        raise CompressorError(f"{spec}: cannot import module {module_name} ({type(exc).__name__}: {exc})") from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise CompressorError(f"{spec}: module {module_name} has no function {function_name}")
    try:
        loaders = function()
    except Exception as exc:  # a failure inside the user's function is a problem with their input, not ours
        raise CompressorError(f"{spec}: {function_name}() raised {type(exc).__name__}: {exc}") from exc
    if not (
        isinstance(loaders, (tuple, list))
        and len(loaders) == 2
        and all(isinstance(loader, DataLoader) for loader in loaders)
    ):
        raise CompressorError(f"{spec}: {function_name}() must return (train_loader, test_loader) as torch DataLoaders")
    train, test = loaders
    for split, loader in (("train", train), ("test", test)):
        _check_first_batch(spec, split, loader, shape)
    count = _function_class_count(spec, train, test)
    _check_class_count(spec, count, num_classes)
    return DataBundle(train=train, test=test, num_classes=count, name=spec)


def _check_first_batch(spec: str, split: str, loader: DataLoader, shape: Shape) -> None:
    try:
        batch = next(iter(loader))
    except StopIteration as exc:
        raise CompressorError(f"{spec}: the {split} loader yields no batches") from exc
    except Exception as exc:  # the user's dataset code runs here
        raise CompressorError(f"{spec}: reading the first {split} batch raised {type(exc).__name__}: {exc}") from exc
    if not (
        isinstance(batch, (tuple, list))
        and len(batch) == 2
        and isinstance(batch[0], torch.Tensor)
        and batch[0].ndim == 4
    ):
        raise CompressorError(f"{spec}: {split} batches must be (images, labels) with images shaped N x C x H x W")
    _check_sample_shape(spec, tuple(batch[0].shape[1:]), shape)


def _function_class_count(spec: str, train: DataLoader, test: DataLoader) -> int:
    """Class count from the train dataset's `classes` (torchvision's convention), else one pass over the labels."""
    classes = getattr(train.dataset, "classes", None)
    if classes is not None:
        return len(classes)
    try:
        labels = [torch.as_tensor(y) for loader in (train, test) for _, y in loader]
    except Exception as exc:  # the user's dataset code runs here
        raise CompressorError(f"{spec}: reading the labels raised {type(exc).__name__}: {exc}") from exc
    if any(y.is_floating_point() or y.is_complex() for y in labels):
        raise CompressorError(f"{spec}: labels must be integer class indices")
    return _label_count(spec, *labels)
