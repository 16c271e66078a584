"""Tests for compressor.data: every spec form loads real-format data at the model's shape, and every user
mistake surfaces as a one-line CompressorError."""

from __future__ import annotations

import itertools
import os
import pickle
import re
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import compressor.data as data
from compressor.data import DataBundle, load_data
from compressor.errors import CompressorError


def _raises(pattern: str, call, *args, **kwargs) -> CompressorError:
    """Assert `call` raises a one-line CompressorError matching `pattern`."""
    with pytest.raises(CompressorError, match=pattern) as info:
        call(*args, **kwargs)
    assert "\n" not in str(info.value)
    return info.value


def _all(loader) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(loader)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def _assert_normalised(images: torch.Tensor) -> None:
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-3), mean
    assert torch.allclose(std, torch.ones_like(std), atol=1e-3), std


# --- digits -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 224, 224)])
def test_digits_served_at_model_shape(shape):
    bundle = load_data("digits", shape, batch_size=32)
    assert isinstance(bundle, DataBundle)
    assert bundle.name == "digits" and bundle.num_classes == 10
    assert len(bundle.train.dataset) + len(bundle.test.dataset) == 1797
    assert len(bundle.test.dataset) == 360
    x, y = next(iter(bundle.train))
    assert x.shape == (32, *shape) and x.dtype == torch.float32
    assert y.shape == (32,) and y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) <= 9
    if shape[0] == 3:
        assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])


def test_digits_train_split_is_normalised():
    train, labels = _all(load_data("digits", (1, 28, 28)).train)
    assert len(train) == 1437 and set(labels.tolist()) == set(range(10))
    _assert_normalised(train)


def test_digits_large_inputs_are_resized_lazily_to_the_same_values(monkeypatch):
    eager = load_data("digits", (3, 28, 28))
    assert eager.train.dataset.images.shape[-2:] == (28, 28)
    monkeypatch.setattr(data, "_PRESIZE_LIMIT_BYTES", 0)
    lazy = load_data("digits", (3, 28, 28))
    assert lazy.train.dataset.images.shape[-2:] == (8, 8)
    for a, b in zip(_all(eager.test), _all(lazy.test)):
        assert torch.allclose(a, b, atol=1e-5)
    big = load_data("digits", (3, 224, 224)).train.dataset
    assert big.images.shape[-2:] == (8, 8)
    assert torch.allclose(big.mean, big.mean.new_full((3, 1, 1), 0.3054), atol=1e-3)


def test_digits_test_split_is_fixed_and_train_order_follows_seed():
    runs = [load_data("digits", (1, 8, 8), batch_size=1000, seed=seed) for seed in (0, 1, 0)]
    tests = [_all(run.test) for run in runs]
    for x, y in tests[1:]:
        assert torch.equal(x, tests[0][0]) and torch.equal(y, tests[0][1])
    orders = [next(iter(run.train))[1] for run in runs]
    assert torch.equal(orders[0], orders[2])
    assert not torch.equal(orders[0], orders[1])
    # Same train samples, only in another order.
    (x0, y0), (x1, y1) = (_all(run.train) for run in runs[:2])
    assert torch.equal(y0.sort().values, y1.sort().values)
    assert torch.allclose(x0.sum(0), x1.sum(0), atol=1e-3)


def test_digits_labels_beyond_model_outputs():
    pattern = r"digits: labels go up to 9 \(10 classes\) but the model has 5 outputs"
    _raises(pattern, load_data, "digits", (1, 8, 8), num_classes=5)


# --- npz ----------------------------------------------------------------------------------------------------


def _write_npz(path, x_train, y_train, x_test, y_test):
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return f"npz:{path}"


@pytest.mark.parametrize(
    "layout, shape",
    [("NCHW", (3, 8, 6)), ("NHWC", (3, 8, 6)), ("NHWC", (1, 8, 6)), ("NHW", (1, 8, 6))],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_npz_layouts_and_dtypes(tmp_path, layout, shape, dtype):
    rng = np.random.default_rng(0)
    sizes = {"train": 40, "test": 12}
    nchw = {split: rng.integers(0, 256, size=(n, *shape)).astype(np.uint8) for split, n in sizes.items()}
    labels = {"train": rng.integers(0, 4, 40), "test": rng.integers(0, 4, 12)}
    labels["train"][0] = 6  # the class count comes from the largest label in either split

    def stored(x):
        x = x if dtype == np.uint8 else (x / 255).astype(dtype)
        return {"NCHW": x, "NHWC": x.transpose(0, 2, 3, 1), "NHW": x[:, 0]}[layout]

    spec = _write_npz(tmp_path / "d.npz", stored(nchw["train"]), labels["train"], stored(nchw["test"]), labels["test"])
    bundle = load_data(spec, shape, batch_size=16, num_classes=7)
    assert bundle.name == spec and bundle.num_classes == 7
    train_x, train_y = _all(bundle.train)
    _assert_normalised(train_x)
    test_x, test_y = _all(bundle.test)
    assert torch.equal(test_y, torch.from_numpy(labels["test"]))
    scaled = torch.from_numpy(nchw["test"]).float() / 255
    mean = (torch.from_numpy(nchw["train"]).float() / 255).mean(dim=(0, 2, 3)).view(-1, 1, 1)
    std = (torch.from_numpy(nchw["train"]).float() / 255).std(dim=(0, 2, 3), unbiased=False).view(-1, 1, 1)
    assert torch.allclose(test_x, (scaled - mean) / std, atol=1e-4)


def test_npz_keras_style_label_column(tmp_path):
    x = np.zeros((4, 1, 2, 2), np.float32)
    spec = _write_npz(tmp_path / "d.npz", x, np.arange(4)[:, None], x, np.arange(4)[:, None])
    assert load_data(spec, (1, 2, 2)).num_classes == 4


def test_npz_errors(tmp_path):
    x, y = np.zeros((4, 3, 32, 32), np.uint8), np.arange(4)
    good = _write_npz(tmp_path / "good.npz", x, y, x, y)
    _raises(r"npz:.*good\.npz: samples are 3x32x32 but the model takes 1x28x28", load_data, good, (1, 28, 28))
    _raises(r"labels go up to 3 \(4 classes\) but the model has 2 outputs", load_data, good, (3, 32, 32), num_classes=2)
    _raises(r"nope\.npz: no such file", load_data, f"npz:{tmp_path / 'nope.npz'}", (3, 32, 32))
    _raises(r"has no path; expected npz:PATH", load_data, "npz:", (3, 32, 32))

    np.savez(tmp_path / "partial.npz", x_train=x, y_train=y)
    pattern = r"missing array\(s\) x_test, y_test; expected x_train, y_train, x_test, y_test"
    _raises(pattern, load_data, f"npz:{tmp_path / 'partial.npz'}", (3, 32, 32))

    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all" * 10)
    _raises(r"junk\.npz: not an \.npz archive", load_data, f"npz:{tmp_path / 'junk.npz'}", (3, 32, 32))

    damaged = tmp_path / "damaged.npz"
    np.savez_compressed(damaged, x_train=np.arange(5000), y_train=y, x_test=x, y_test=y)
    raw = bytearray(damaged.read_bytes())
    raw[200:260] = b"\xff" * 60
    damaged.write_bytes(bytes(raw))
    _raises(r"damaged\.npz: cannot read the archive", load_data, f"npz:{damaged}", (3, 32, 32))

    # Object arrays would need unpickling, which an npz from an untrusted source must not get.
    objects = _write_npz(tmp_path / "o.npz", x, y.astype(object), x, y)
    _raises(r"cannot read the archive", load_data, objects, (3, 32, 32))

    bad_contents = [
        (x, y.astype(np.float32), r"y_train has shape \(4,\) and dtype float32; expected 1-D integer class labels"),
        (x, y[:3], r"y_train has 3 labels but there are 4 images"),
        (x, y - 1, r"labels must be class indices 0..K-1 but one is -1"),
        (x.astype(np.int64), y, r"x_train has dtype int64; expected uint8 \(0..255\) or float"),
        (x.reshape(4, -1), y, r"x_train has shape \(4, 3072\); expected images as NCHW, NHWC or NHW"),
    ]
    for index, (x_train, y_train, pattern) in enumerate(bad_contents):
        _raises(pattern, load_data, _write_npz(tmp_path / f"bad{index}.npz", x_train, y_train, x, y), (3, 32, 32))
    _raises(r"x_test has no samples", load_data, _write_npz(tmp_path / "e.npz", x, y, x[:0], y[:0]), (3, 32, 32))


# --- cifar10 ------------------------------------------------------------------------------------------------


def _write_cifar(directory, per_batch=6, protocol=2, seed=0):
    """A CIFAR-10 python-version directory in the real format: pickled dicts with bytes keys."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for index, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        batch = {
            b"batch_label": f"batch {index + 1}".encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            b"data": rng.integers(0, 256, size=(per_batch, 3072)).astype(np.uint8),
            b"filenames": [f"img_{index}_{i}.png".encode() for i in range(per_batch)],
        }
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        written[name] = batch
    return written


@pytest.mark.parametrize("protocol", [0, 2, pickle.DEFAULT_PROTOCOL, 5])
def test_cifar10_real_format(tmp_path, protocol):
    written = _write_cifar(tmp_path / "cifar", protocol=protocol)
    bundle = load_data(f"cifar10:{tmp_path / 'cifar'}", (3, 32, 32), batch_size=8, num_classes=10)
    assert bundle.name == f"cifar10:{tmp_path / 'cifar'}"
    assert len(bundle.train.dataset) == 30 and len(bundle.test.dataset) == 6
    train_x, _ = _all(bundle.train)
    assert train_x.shape == (30, 3, 32, 32)
    _assert_normalised(train_x)
    test_x, test_y = _all(bundle.test)
    assert test_y.tolist() == written["test_batch"][b"labels"]
    # Rows are 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32.
    dataset = bundle.test.dataset
    restored = test_x * dataset.std + dataset.mean
    red_of_first = torch.from_numpy(written["test_batch"][b"data"][0, :1024].reshape(32, 32)).float() / 255
    assert torch.allclose(restored[0, 0], red_of_first, atol=1e-5)
    assert bundle.num_classes == max(max(b[b"labels"]) for b in written.values()) + 1


def test_cifar10_batches_pickled_by_numpy_1_load(tmp_path):
    # The published files come from numpy 1.x, whose arrays pickle as numpy.core.multiarray._reconstruct.
    _write_cifar(tmp_path / "cifar", protocol=2)
    for path in (tmp_path / "cifar").iterdir():
        path.write_bytes(path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray\n_reconstruct" in (tmp_path / "cifar" / "test_batch").read_bytes()
    bundle = load_data(f"cifar10:{tmp_path / 'cifar'}", (3, 32, 32))
    assert len(bundle.train.dataset) == 30


class _RunsCode:
    """Pickles to a call of `function(argument)`: what a tampered batch would contain."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize("payload", ["exec", "os.system"])
def test_cifar10_malicious_pickle_is_refused_without_running(tmp_path, payload):
    _write_cifar(tmp_path / "cifar")
    marker = tmp_path / "pwned"
    if payload == "exec":
        evil = _RunsCode(exec, f"open({str(marker)!r}, 'w').close()")
    else:
        evil = _RunsCode(os.system, f"touch '{marker}'")
    batch = {b"labels": [1], b"data": np.zeros((1, 3072), np.uint8), b"filenames": [evil]}
    (tmp_path / "cifar" / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=2))
    pattern = r"refused to load data_batch_3: it calls ((__builtin__|builtins)\.exec|posix\.system|os\.system)"
    error = _raises(pattern, load_data, f"cifar10:{tmp_path / 'cifar'}", (3, 32, 32))
    assert "numpy arrays and builtin containers" in str(error)
    assert not marker.exists()
    # The payload is real: an ordinary unpickler runs it.
    pickle.loads((tmp_path / "cifar" / "data_batch_3").read_bytes())
    assert marker.exists()


def test_cifar10_errors(tmp_path):
    directory = tmp_path / "cifar"
    _write_cifar(directory)
    spec = f"cifar10:{directory}"
    _raises(r"CIFAR-10 samples are 3x32x32 but the model takes 1x28x28", load_data, spec, (1, 28, 28))
    pattern = r"labels go up to \d \(\d+ classes\) but the model has 2 outputs"
    _raises(pattern, load_data, spec, (3, 32, 32), num_classes=2)
    _raises(r"missing: no such directory", load_data, f"cifar10:{tmp_path / 'missing'}", (3, 32, 32))

    (directory / "test_batch").write_bytes(b"\x80\x02garbage that is not a pickle")
    _raises(r"test_batch is not a readable CIFAR-10 batch", load_data, spec, (3, 32, 32))
    (directory / "test_batch").write_bytes(pickle.dumps({b"labels": [1]}, protocol=2))
    _raises(r'test_batch is not a CIFAR-10 batch; expected a dict with b"data"', load_data, spec, (3, 32, 32))
    narrow = {b"labels": [1], b"data": np.zeros((1, 100), np.uint8)}
    (directory / "test_batch").write_bytes(pickle.dumps(narrow, protocol=2))
    _raises(r"test_batch has unexpected contents", load_data, spec, (3, 32, 32))
    extra_label = {b"labels": [1, 2], b"data": np.zeros((1, 3072), np.uint8)}
    (directory / "test_batch").write_bytes(pickle.dumps(extra_label, protocol=2))
    _raises(r"test_batch has unexpected contents", load_data, spec, (3, 32, 32))

    (directory / "test_batch").unlink()
    (directory / "data_batch_5").unlink()
    _raises(r"missing data_batch_5, test_batch; expected the python-version batches", load_data, spec, (3, 32, 32))


# --- imagefolder --------------------------------------------------------------------------------------------


def _write_images(root, layout):
    """layout: {split: {class: [(width, height, suffix), ...]}}; each image has a random colour."""
    rng = np.random.default_rng(0)
    for split, classes in layout.items():
        for class_name, images in classes.items():
            folder = root / split / class_name
            folder.mkdir(parents=True, exist_ok=True)
            for index, (width, height, suffix) in enumerate(images):
                pixels = rng.integers(0, 256, size=(height, width, 3)).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}{suffix}")


_FOLDER = {
    "train": {"cat": [(10, 7, ".png"), (40, 30, ".PNG"), (3, 5, ".jpg")], "ant": [(16, 16, ".bmp"), (9, 9, ".jpeg")]},
    "val": {"cat": [(12, 12, ".png")], "ant": [(50, 20, ".png")]},
}


@pytest.mark.parametrize("shape", [(3, 12, 16), (1, 8, 8)])
def test_imagefolder_resizes_images_of_any_size(tmp_path, shape):
    _write_images(tmp_path / "imgs", _FOLDER)
    (tmp_path / "imgs" / "train" / "cat" / "notes.txt").write_text("not an image")
    bundle = load_data(f"imagefolder:{tmp_path / 'imgs'}", shape, batch_size=4, num_classes=2)
    assert bundle.num_classes == 2 and bundle.name == f"imagefolder:{tmp_path / 'imgs'}"
    train_x, train_y = _all(bundle.train)
    assert train_x.shape == (5, *shape)
    assert sorted(train_y.tolist()) == [0, 0, 1, 1, 1]  # classes sorted: ant=0, cat=1
    _assert_normalised(train_x)
    test_x, test_y = _all(bundle.test)
    assert test_x.shape == (2, *shape) and test_y.tolist() == [0, 1]


def test_imagefolder_errors(tmp_path):
    root = tmp_path / "imgs"
    spec = f"imagefolder:{root}"
    _raises(r"no train/ folder; expected .*train/<class>/\*\.png", load_data, spec, (3, 8, 8))
    _write_images(root, {"train": _FOLDER["train"]})
    _raises(r"no val/ folder", load_data, spec, (3, 8, 8))
    _write_images(root, {"val": {"cat": [(4, 4, ".png")], "bee": [(4, 4, ".png")]}})
    _raises(r"same class folders \(only in train: \['ant'\], only in val: \['bee'\]\)", load_data, spec, (3, 8, 8))
    _raises(r"grayscale \(1 channel\) or RGB \(3 channels\) but the model takes 2 channels", load_data, spec, (2, 8, 8))
    (root / "val" / "bee" / "0.png").unlink()
    (root / "val" / "bee").rmdir()
    _write_images(root, {"val": {"ant": [(4, 4, ".png")]}})
    _raises(r"labels go up to 1 \(2 classes\) but the model has 1 outputs", load_data, spec, (3, 8, 8), num_classes=1)
    (root / "train" / "ant" / "broken.png").write_bytes(b"\x89PNG truncated")
    _raises(r"cannot read image .*broken\.png", load_data, spec, (3, 8, 8))

    empty = tmp_path / "empty"
    for split in ("train", "val"):
        (empty / split / "only").mkdir(parents=True)
    _raises(r"class folders train/only, val/only have no \.png, \.jpg, \.jpeg, \.bmp images$", load_data,
            f"imagefolder:{empty}", (3, 8, 8))
    (tmp_path / "flat" / "train").mkdir(parents=True)
    (tmp_path / "flat" / "val").mkdir()
    _raises(r"train/ has no class folders", load_data, f"imagefolder:{tmp_path / 'flat'}", (3, 8, 8))


def test_imagefolder_class_folders_without_images_are_named(tmp_path):
    root = tmp_path / "imgs"
    spec = f"imagefolder:{root}"
    _write_images(root, _FOLDER)
    (root / "train" / "dog").mkdir()
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    _write_images(root, {"val": {"dog": [(4, 4, ".png")]}})
    _raises(rf"^{re.escape(spec)}: class folder train/dog has no \.png, \.jpg, \.jpeg, \.bmp images$", load_data, spec,
            (3, 8, 8))
    for image in (root / "val" / "ant").iterdir():
        image.unlink()
    _raises(r": class folders train/dog, val/ant have no \.png, \.jpg, \.jpeg, \.bmp images$", load_data, spec,
            (3, 8, 8))


@pytest.mark.parametrize("form, shape", [("npz", (3, 32, 32)), ("cifar10", (3, 32, 32)), ("imagefolder", (3, 8, 8))])
@pytest.mark.parametrize("name", ["a" * 300, "d/" * 2100 + "data"])
def test_data_paths_the_os_refuses_are_one_line_errors(tmp_path, form, shape, name):
    what = "file" if form == "npz" else "folder"
    _raises(rf"^cannot read data {what} .+\.\.\..+: File name too long$", load_data, f"{form}:{tmp_path / name}",
            shape)


# --- package.module:function --------------------------------------------------------------------------------

_module_names = (f"user_data_{i}" for i in itertools.count())


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write a module into tmp_path, importable under a fresh name; returns that name."""
    created = []

    def write(source: str) -> str:
        name = next(_module_names)
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        created.append(name)
        return name

    monkeypatch.syspath_prepend(str(tmp_path))
    yield write
    for name in created:
        sys.modules.pop(name, None)


_LOADERS = """
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    def _dataset(n, top):
        return TensorDataset(torch.randn(n, 1, 6, 6), torch.arange(n) % top)

    def loaders():
        return DataLoader(_dataset(20, 3), batch_size=8, shuffle=True), DataLoader(_dataset(6, 5), batch_size=8)

    def with_classes():
        train, test = _dataset(20, 3), _dataset(6, 3)
        train.classes = ["a", "b", "c", "d"]
        return DataLoader(train, batch_size=8), DataLoader(test, batch_size=8)

    def broken():
        raise RuntimeError("dataset server is down")

    def not_loaders():
        return [1, 2, 3]

    def flat_batches():
        data = TensorDataset(torch.randn(4, 36), torch.zeros(4, dtype=torch.long))
        return DataLoader(data), DataLoader(data)

    def empty_test():
        return DataLoader(_dataset(4, 2)), DataLoader(TensorDataset(torch.zeros(0, 1, 6, 6), torch.zeros(0)))

    def float_labels():
        data = TensorDataset(torch.randn(4, 1, 6, 6), torch.zeros(4))
        return DataLoader(data), DataLoader(data)

    not_callable = 3
"""


def test_module_function_loaders_are_used_as_returned(user_module):
    name = user_module(_LOADERS)
    bundle = load_data(f"{name}:loaders", (1, 6, 6), num_classes=5)
    assert bundle.name == f"{name}:loaders"
    assert bundle.num_classes == 5  # scanned: test labels reach 4
    x, y = next(iter(bundle.train))
    assert x.shape == (8, 1, 6, 6)
    assert load_data(f"{name}:with_classes", (1, 6, 6)).num_classes == 4


def test_module_function_errors(user_module):
    name = user_module(_LOADERS)
    shape = (1, 6, 6)
    pattern = r"no_such_pkg\.mod:f: cannot import module no_such_pkg\.mod \(ModuleNotFoundError"
    _raises(pattern, load_data, "no_such_pkg.mod:f", shape)
    _raises(rf"module {name} has no function missing", load_data, f"{name}:missing", shape)
    _raises(rf"module {name} has no function not_callable", load_data, f"{name}:not_callable", shape)
    _raises(r"broken\(\) raised RuntimeError: dataset server is down", load_data, f"{name}:broken", shape)
    _raises(r"must return \(train_loader, test_loader\) as torch DataLoaders", load_data, f"{name}:not_loaders", shape)
    _raises(r"samples are 1x6x6 but the model takes 3x32x32", load_data, f"{name}:loaders", (3, 32, 32))
    pattern = r"train batches must be \(images, labels\) with images shaped N x C x H x W"
    _raises(pattern, load_data, f"{name}:flat_batches", shape)
    _raises(r"the test loader yields no batches", load_data, f"{name}:empty_test", shape)
    _raises(r"labels must be integer class indices", load_data, f"{name}:float_labels", shape)
    pattern = r"labels go up to 4 \(5 classes\) but the model has 3 outputs"
    _raises(pattern, load_data, f"{name}:loaders", shape, num_classes=3)
    broken_module = user_module("raise ImportError('needs a GPU driver')\n")
    _raises(r"cannot import module .*needs a GPU driver", load_data, f"{broken_module}:loaders", shape)


# --- general ------------------------------------------------------------------------------------------------


def test_spec_and_argument_errors():
    forms = r"digits, npz:PATH, cifar10:DIR, imagefolder:DIR or package\.module:function"
    _raises(rf"unknown data spec 'mnist'; expected {forms}", load_data, "mnist", (1, 28, 28))
    _raises(r"unknown data spec", load_data, "/data/train.npz", (1, 28, 28))
    _raises(r"input shape must be three positive integers C, H, W", load_data, "digits", (28, 28))
    _raises(r"input shape must be three positive integers", load_data, "digits", (1, 0, 28))
    _raises(r"batch size must be a positive integer, got 0", load_data, "digits", (1, 28, 28), batch_size=0)


def test_npz_corrupt_member_in_valid_zip(tmp_path):
    path = tmp_path / "member.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for key in ("x_train", "y_train", "x_test", "y_test"):
            archive.writestr(f"{key}.npy", b"this is not an npy header")
    _raises(r"member\.npz: cannot read the archive", load_data, f"npz:{path}", (1, 2, 2))
