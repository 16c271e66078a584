"""Every model form loads, and nothing runs code from a file without --trust-model."""

import pickle

import pytest
import torch
import torch.nn as nn

from compressor.errors import CompressorError
from compressor.loading import load_model, parse_input_shape, save_checkpoint
from compressor.models import create_model


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
    assert torch.load(tmp_path / "m.pt", weights_only=True)["extra"] == {"note": 1}


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


@pytest.mark.parametrize("content, message", [
    (b"", "not a readable PyTorch file"),
    (b"garbage that is no pickle or zip", "not a readable PyTorch file"),
])
def test_corrupt_files_are_one_line_errors(tmp_path, content, message):
    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(CompressorError, match=message):
        load_model(tmp_path / "bad.pt")


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


@pytest.mark.parametrize("text", ["3,32", "a,b,c", "0,32,32", ""])
def test_bad_input_shape_text(text):
    with pytest.raises(CompressorError):
        parse_input_shape(text)
    assert parse_input_shape("3,32,32") == (3, 32, 32)
