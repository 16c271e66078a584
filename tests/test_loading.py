"""Every model form loads, and nothing runs code from a file without --trust-model."""

import importlib
import itertools
import math
import os
import pickle
import pickletools
import struct
import sys
import tracemalloc
import zipfile
from pathlib import Path

import cloudpickle
import pytest
import torch
import torch.nn as nn

from compressor.errors import CompressorError
from compressor.loading import load_model, module_pickler, parse_input_shape, save_checkpoint, trained_with
from compressor.models import create_model
from compressor.models.units import PadShortcut, ResidualUnit
from shared import set_values_

DATA = Path(__file__).parent / "data"
# The top-level name of a user's own package that our zoo also had in 0.1.0.
USERS_PACKAGE = "models"


class Evil:
    """Unpickling this writes a marker file: the code a malicious pickle would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def same_outputs(a, b, shape):
    x = torch.randn(2, *shape)
    with torch.no_grad():
        return torch.allclose(a.eval()(x), b.eval()(x))


def test_checkpoint_round_trip(tmp_path):
    model = create_model("resnet20", num_classes=7, in_channels=1)
    save_checkpoint(model, tmp_path / "m.pt", extra={"note": 1})
    loaded = load_model(tmp_path / "m.pt")
    assert (loaded.arch, loaded.num_classes, loaded.input_shape) == ("resnet20", 7, (1, 32, 32))
    assert same_outputs(model, loaded, (1, 32, 32))
    assert torch.load(tmp_path / "m.pt", weights_only=True)["extra"] == {
        "note": 1, "trained_with": {"loss": "ce", "optimizer": "sgd"}}


def test_checkpoint_keeps_the_loss_and_optimizer_the_model_was_trained_with(tmp_path):
    model = create_model("lenet5")
    model.trained_with = {"loss": "bsp", "optimizer": "adam"}
    save_checkpoint(model, tmp_path / "m.pt")
    assert load_model(tmp_path / "m.pt").trained_with == {"loss": "bsp", "optimizer": "adam"}
    torch.save({**torch.load(tmp_path / "m.pt", weights_only=True), "extra": {}}, tmp_path / "old.pt")
    assert trained_with(load_model(tmp_path / "old.pt")) == {"loss": "ce", "optimizer": "sgd"}


def test_state_dict_needs_the_right_arch(tmp_path):
    model = create_model("lenet5", num_classes=4)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CompressorError, match="--arch"):
        load_model(tmp_path / "sd.pt")
    with pytest.raises(CompressorError, match="does not fit architecture resnet20"):
        load_model(tmp_path / "sd.pt", arch="resnet20")
    loaded = load_model(tmp_path / "sd.pt", arch="lenet5")
    assert loaded.num_classes == 4 and same_outputs(model, loaded, (1, 28, 28))


def test_nested_state_dict_is_found(tmp_path):
    model = create_model("lenet300_100")
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, tmp_path / "ckpt.pt")
    assert same_outputs(model, load_model(tmp_path / "ckpt.pt", arch="lenet300_100"), (1, 28, 28))


def test_torchscript_loads_with_input_shape(tmp_path):
    model = UserNet().eval()
    torch.jit.save(torch.jit.trace(model, torch.randn(1, 1, 8, 8)), str(tmp_path / "ts.pt"))
    with pytest.raises(CompressorError, match="--input-shape"):
        load_model(tmp_path / "ts.pt")
    loaded = load_model(tmp_path / "ts.pt", input_shape=(1, 8, 8))
    assert loaded.input_shape == (1, 8, 8) and same_outputs(model, loaded, (1, 8, 8))


def test_pickled_module_needs_trust(tmp_path):
    torch.save(UserNet(), tmp_path / "whole.pt")
    with pytest.raises(CompressorError, match="--trust-model"):
        load_model(tmp_path / "whole.pt", input_shape=(1, 8, 8))
    assert isinstance(load_model(tmp_path / "whole.pt", trust=True, input_shape=(1, 8, 8)), UserNet)


def test_malicious_pickle_never_runs_without_trust(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump(Evil(marker), f)
    torch.save({"x": Evil(marker)}, tmp_path / "evil_zip.pt")
    for name in ("evil.pt", "evil_zip.pt"):
        with pytest.raises(CompressorError, match="--trust-model"):
            load_model(tmp_path / name)
    assert not marker.exists()


@pytest.mark.parametrize("content", [
    b"",
    b"garbage that is no pickle or zip",
    # torch takes zeros for its legacy tar format, and advises loading that with weights_only=False.
    bytes(2**20),
    # An end-of-archive record whose central directory is not where it says.
    b"x" * 100 + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, 46, 0, 0),
])
def test_corrupt_files_are_one_line_errors_in_our_words(tmp_path, content):
    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(CompressorError) as caught:
        load_model(tmp_path / "bad.pt")
    assert str(caught.value) == f"{tmp_path / 'bad.pt'} is not a readable PyTorch file (damaged, or not a checkpoint)"


def test_a_large_damaged_file_is_scanned_in_little_memory(tmp_path):
    # POP on an empty stack stops torch's weights-only unpickler at once; the scan for imported code then reads
    # the 16 MiB of well-formed opcodes after it.
    chunk = b"X" + struct.pack("<I", 2**16) + b"a" * 2**16
    path = tmp_path / "long.pt"
    path.write_bytes(b"\x80\x02" + b"0" + chunk * 256)
    tracemalloc.start()
    try:
        with pytest.raises(CompressorError, match="not a readable PyTorch file"):
            load_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < path.stat().st_size / 8


def test_truncated_checkpoint_and_missing_file(tmp_path):
    save_checkpoint(create_model("lenet5"), tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CompressorError):
        load_model(tmp_path / "cut.pt")
    with pytest.raises(CompressorError, match="not found"):
        load_model(tmp_path / "nope.pt")


def test_non_model_payload(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CompressorError, match="holds no model"):
        load_model(tmp_path / "list.pt")


@pytest.mark.parametrize("name", ["a" * 300 + ".pt", "d/" * 2100 + "m.pt"])
def test_a_path_the_os_refuses_is_a_one_line_error(tmp_path, name):
    with pytest.raises(CompressorError, match=r"^cannot read model .+\.\.\..+\.pt: File name too long$"):
        load_model(tmp_path / name)


@pytest.mark.parametrize("tensor, values, problem", [
    ("features.stem.0.weight", [math.nan], "weights of layer features.stem.0 contain NaN (features.stem.0.weight)"),
    ("features.stem.1.running_var", [math.inf],
     "weights of layer features.stem.1 contain Inf (features.stem.1.running_var)"),
    ("classifier.fc.bias", [-math.inf, math.nan],
     "weights of layer classifier.fc contain NaN and Inf (classifier.fc.bias)"),
])
def test_a_checkpoint_or_state_dict_with_weights_that_are_not_finite_is_refused(tmp_path, tensor, values, problem):
    model = set_values_(create_model("resnet20"), tensor, values)
    save_checkpoint(model, tmp_path / "ckpt.pt")
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    for name, options in (("ckpt.pt", {}), ("sd.pt", {"arch": "resnet20"})):
        with pytest.raises(CompressorError) as caught:
            load_model(tmp_path / name, **options)
        assert str(caught.value) == f"{tmp_path / name}: {problem}"


class ScaledNet(UserNet):
    """UserNet with a parameter of its own, outside any layer."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return super().forward(x) * self.scale


@pytest.mark.parametrize("model, problem", [
    (lambda: set_values_(set_values_(UserNet(), "fc.weight", [math.nan]), "conv.bias", [math.inf]),
     "weights of layer conv contain Inf (conv.bias)"),
    (lambda: set_values_(ScaledNet(), "scale", [math.nan]), "weights of the top-level module contain NaN (scale)"),
])
def test_a_torchscript_archive_or_pickled_module_with_weights_that_are_not_finite_is_refused(tmp_path, model,
                                                                                               problem):
    model = model()
    torch.jit.save(torch.jit.trace(model, torch.randn(1, 1, 8, 8), check_trace=False), str(tmp_path / "ts.pt"))
    torch.save(model, tmp_path / "whole.pt")
    for name in ("ts.pt", "whole.pt"):
        with pytest.raises(CompressorError) as caught:
            load_model(tmp_path / name, trust=True, input_shape=(1, 8, 8))
        assert str(caught.value) == f"{tmp_path / name}: {problem}"


@pytest.mark.parametrize("text", ["3,32", "a,b,c", "0,32,32", ""])
def test_bad_input_shape_text(text):
    with pytest.raises(CompressorError):
        parse_input_shape(text)
    assert parse_input_shape("3,32,32") == (3, 32, 32)


def pickled_globals(path):
    """The module names a torch.save file's pickle imports from, read without unpickling."""
    with zipfile.ZipFile(path) as archive:
        data = next(archive.read(name) for name in archive.namelist() if name.endswith("data.pkl"))
    return {arg.split(" ")[0] for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


@pytest.fixture
def users_models_package(tmp_path, monkeypatch):
    """A user's own top-level `models` package, first on the path (the name our zoo had in 0.1.0)."""
    package = tmp_path / "site" / USERS_PACKAGE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('KIND = "the user\'s models"\n')
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in [name for name in sys.modules if name.split(".")[0] == USERS_PACKAGE]:
        monkeypatch.delitem(sys.modules, name)
    yield package
    for name in [name for name in sys.modules if name.split(".")[0] == USERS_PACKAGE]:
        del sys.modules[name]


def test_a_v01_pickled_module_loads_and_computes_its_recorded_output():
    # Written by 0.1.0's compress (see tests/data/make_v01_pickle.py): a channel-sliced residual unit with an
    # option-A shortcut, pickled under the module name models.units.
    path = DATA / "v01_residual_net.pt"
    assert "models.units" in pickled_globals(path)
    with pytest.raises(CompressorError, match="--trust-model"):
        load_model(path)
    model = load_model(path, trust=True)
    assert isinstance(model[3], ResidualUnit) and isinstance(model[3].shortcut, PadShortcut)
    recorded = torch.load(DATA / "v01_residual_net_io.pt", weights_only=True)
    with torch.no_grad():
        torch.testing.assert_close(model(recorded["input"]), recorded["output"], rtol=1e-5, atol=1e-6)


def test_a_v01_pickled_module_loads_beside_a_users_models_package(users_models_package):
    users = importlib.import_module(USERS_PACKAGE)

    model = load_model(DATA / "v01_residual_net.pt", trust=True)
    assert isinstance(model[3], ResidualUnit)
    assert sys.modules[USERS_PACKAGE] is users and users.KIND == "the user's models"


def test_a_users_class_under_our_former_module_name_wins(users_models_package, tmp_path):
    (users_models_package / "units.py").write_text(
        "import torch.nn as nn\n\n\n"
        "class ResidualUnit(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(64, 10)\n\n"
        "    def forward(self, x):\n"
        "        return self.fc(x.flatten(1))\n")
    UsersUnit = importlib.import_module(f"{USERS_PACKAGE}.units").ResidualUnit

    torch.save(UsersUnit(), tmp_path / "user.pt")
    assert type(load_model(tmp_path / "user.pt", trust=True, input_shape=(1, 8, 8))) is UsersUnit


def test_save_checkpoint_uses_cloudpickle_only_where_pickle_cannot(tmp_path):
    plain = UserNet()
    assert module_pickler(plain) is pickle and module_pickler(create_model("lenet5")) is None
    held = UserNet()
    held.activation = lambda x: torch.relu(x)
    assert module_pickler(held) is cloudpickle
    save_checkpoint(held, tmp_path / "held.pt")
    assert "cloudpickle.cloudpickle" in pickled_globals(tmp_path / "held.pt")
    with pytest.raises(CompressorError, match="--trust-model"):
        load_model(tmp_path / "held.pt", input_shape=(1, 8, 8))
    loaded = load_model(tmp_path / "held.pt", trust=True, input_shape=(1, 8, 8))
    assert loaded.activation(torch.tensor([-1.0, 2.0])).tolist() == [0.0, 2.0]
    assert same_outputs(held, loaded, (1, 8, 8))


@pytest.mark.parametrize("unpicklable", [lambda: (n for n in itertools.count()), lambda: open(os.devnull, "w")])
def test_a_model_neither_pickle_can_write_is_a_one_line_error(tmp_path, unpicklable):
    model = UserNet()
    model.source = unpicklable()
    with pytest.raises(CompressorError, match="cannot be saved") as error:
        save_checkpoint(model, tmp_path / "m.pt")
    if hasattr(model.source, "close"):
        model.source.close()
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []
