"""The distribution installs one import name, `compressor`, and leaves the names `models`, `runtime` and
`passes` to the user: the wheel holds nothing else at top level, and a run next to a user's own modules of
those names works and leaves them theirs."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from compressor.loading import save_checkpoint
from compressor.models import create_model

ROOT = Path(__file__).resolve().parents[1]
# What the build reads: the four code folders and the two files pyproject.toml names.
SOURCES = ["compressor", "passes", "runtime", "models", "pyproject.toml", "README.md"]


def test_the_wheel_installs_only_the_compressor_package(tmp_path):
    # The build runs on a copy, so that it neither writes build/ and *.egg-info into the checkout nor packs
    # whatever an earlier build left there.
    source = tmp_path / "source"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    tmp_path / "dist", source], check=True, capture_output=True, timeout=120)
    [wheel] = (tmp_path / "dist").glob("compressor-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"compressor"}
    assert all(name.startswith("compressor/") for name in names if name.endswith(".py"))
    for package in ("compressor", "compressor/methods", "compressor/passes", "compressor/runtime",
                    "compressor/models"):
        assert f"{package}/__init__.py" in names
    for folder, package in (("passes", "passes"), ("runtime", "runtime"), ("models", "models")):
        for module in (ROOT / folder).glob("*.py"):
            assert f"compressor/{package}/{module.name}" in names
    bundle = {path.name for path in (ROOT / "runtime" / "bundle").iterdir() if path.is_file()}
    assert bundle and {f"compressor/runtime/bundle/{name}" for name in bundle} <= set(names)
    top_level_txt = next((name for name in names if name.endswith(".dist-info/top_level.txt")), None)
    if top_level_txt is not None:
        assert zipfile.ZipFile(wheel).read(top_level_txt).decode().split() == ["compressor"]


USERS_SCRIPT = """
import importlib
import json
import sys

import compressor

users_modules = ("models", "runtime", "passes")  # the project's own, beside this script
report = compressor.compress(sys.argv[1], "magnitude", "50%", epochs=1, out=sys.argv[2], bench_runs=2,
                             progress=False)
imported_by_compressor = sorted(name for name in users_modules if name in sys.modules)
kinds = [importlib.import_module(name).KIND for name in users_modules]
print(json.dumps({"sparsity": report.compressed.sparsity, "imported_by_compressor": imported_by_compressor,
                  "kinds": kinds}))
"""


def test_a_run_beside_the_users_models_runtime_and_passes(tmp_path):
    work = tmp_path / "project"
    (work / "models").mkdir(parents=True)
    # Same names as ours, unrelated contents: a run that imported any of them would break or change them.
    (work / "models" / "__init__.py").write_text('KIND = "user models"\n\ndef create_model(name):\n'
                                                 '    raise RuntimeError("the user\'s create_model")\n')
    (work / "runtime.py").write_text('KIND = "user runtime"\n')
    (work / "passes.py").write_text('KIND = "user passes"\n')
    save_checkpoint(create_model("lenet300_100"), work / "lenet.pt")
    result = subprocess.run([sys.executable, "-c", USERS_SCRIPT, "lenet.pt", "out"], cwd=work, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts["imported_by_compressor"] == []
    assert facts["kinds"] == ["user models", "user runtime", "user passes"]
    assert abs(facts["sparsity"] - 0.5) < 0.01
    assert (work / "out" / "model.onnx").is_file()
