"""Atomic writes and staged output folders leave nothing half-written."""

import os

import pytest

from compressor.errors import CompressorError
from compressor.files import StagedFolder, atomic_write, atomic_write_text, check_writable_destination


def test_atomic_write_replaces_whole_and_cleans_up_on_failure(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")

    def failing(tmp):
        tmp.write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_existing_destination_needs_force(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(CompressorError, match="--force"):
        check_writable_destination(tmp_path / "out", force=False)
    assert check_writable_destination(tmp_path / "out", force=True) == tmp_path / "out"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_destination_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    with pytest.raises(CompressorError, match="not a writable folder"):
        check_writable_destination(locked / "out", force=False)


def test_staged_folder_appears_only_on_commit(tmp_path):
    folder = StagedFolder(tmp_path / "out")
    (folder.staging / "model.onnx").write_text("x")
    assert not (tmp_path / "out").exists()
    folder.commit()
    assert (tmp_path / "out" / "model.onnx").read_text() == "x"
    replaced = StagedFolder(tmp_path / "out", force=True)
    (replaced.staging / "report.json").write_text("{}")
    replaced.commit()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_staged_folder_keeps_state_only_for_resume(tmp_path):
    folder = StagedFolder(tmp_path / "out")
    (folder.staging / "train-state.pt").write_text("state")
    assert (StagedFolder(tmp_path / "out", resume=True).staging / "train-state.pt").exists()
    assert not (StagedFolder(tmp_path / "out").staging / "train-state.pt").exists()


def test_destination_under_a_file_is_refused(tmp_path):
    (tmp_path / "plain.txt").write_text("x")
    with pytest.raises(CompressorError, match="not a writable folder"):
        check_writable_destination(tmp_path / "plain.txt" / "out", force=False)


def test_a_retired_folder_left_by_a_crash_does_not_block_commit(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / ".out.old").mkdir()
    (tmp_path / ".out.old" / "stale").write_text("x")
    folder = StagedFolder(tmp_path / "out", force=True)
    (folder.staging / "model.onnx").write_text("new")
    folder.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
