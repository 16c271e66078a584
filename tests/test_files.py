"""Atomic writes and the output protocol: nothing half-written, one writer per destination, resume state kept."""

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from compressor.errors import CompressorError, ResumeRefused, printable, quoted
from compressor.files import (STATE_FILE, Output, atomic_torch_save, atomic_write, atomic_write_text, check_name,
                              sibling)
from shared import small_disk, under_file_size_limit

LONG_NAME = "n" * 250


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_replaces_whole_and_cleans_up_on_failure(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")

    def failing(tmp):
        tmp.write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert target.read_text() == "old"
    assert listing(tmp_path) == ["a.txt"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def test_an_os_error_while_writing_is_one_line_naming_the_file(tmp_path):
    def full(tmp):
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(CompressorError, match=r"cannot write .*a\.txt: No space left on device"):
        atomic_write(tmp_path / "a.txt", full)
    assert listing(tmp_path) == []


def test_a_full_disk_under_torch_save_is_reported_as_such():
    # torch.save turns the failed write into a RuntimeError about stream positions; the OS error is what counts.
    with small_disk(1) as disk:
        with pytest.raises(CompressorError, match="No space left on device"):
            atomic_torch_save({"w": torch.zeros(2**20)}, disk / "w.pt")
        assert listing(disk) == []


def test_a_size_limit_under_torch_save_is_one_line(tmp_path):
    script = "from compressor.files import atomic_torch_save; import torch; atomic_torch_save(torch.zeros(2**20), 'w.pt')"
    result = under_file_size_limit([sys.executable, "-c", script], 2**16, cwd=tmp_path)
    assert result.returncode == 1
    assert "CompressorError: cannot write w.pt: File too large" in result.stderr
    assert listing(tmp_path) == []


def test_text_that_utf8_cannot_hold_is_escaped_not_fatal(tmp_path):
    name = os.fsdecode(b"caf\xe9")
    assert printable(name) == "caf\\xe9" and printable("naïve") == "naïve"
    atomic_write_text(tmp_path / "r.md", f"model {name}\n")
    assert (tmp_path / "r.md").read_text(encoding="utf-8") == "model caf\\xe9\n"
    assert quoted("x" * 500).count("...") == 1 and len(quoted("x" * 500)) < 100


def test_a_sibling_of_a_long_name_fits_and_is_the_same_every_time(tmp_path):
    partial = sibling(tmp_path / LONG_NAME, "partial")
    assert len(partial.name.encode()) <= 255 and partial.name.endswith(".partial")
    assert partial == sibling(tmp_path / LONG_NAME, "partial") != sibling(tmp_path / ("m" * 250), "partial")
    assert sibling(tmp_path / "out", "lock").name == ".out.lock"


def test_names_the_os_refuses_are_refused_before_any_work(tmp_path):
    with pytest.raises(CompressorError, match="is 300 bytes and this file system allows 255"):
        check_name(tmp_path / ("n" * 300), "output folder")
    deep = "/".join(["d" * 200] * 21)
    with pytest.raises(CompressorError, match="paths here are limited to 4096 bytes"):
        check_name(tmp_path / deep, "output folder")


def test_a_folder_appears_only_on_commit_and_force_replaces_it(tmp_path):
    with Output(tmp_path / "out", folder=True, what="output folder") as output:
        (output.staging / "model.onnx").write_text("x")
        assert not (tmp_path / "out").exists()
        output.commit()
    assert (tmp_path / "out" / "model.onnx").read_text() == "x"
    with Output(tmp_path / "out", folder=True, what="output folder", force=True) as output:
        (output.staging / "report.json").write_text("{}")
        output.commit()
    assert listing(tmp_path / "out") == ["report.json"]
    assert listing(tmp_path) == ["out"]


def test_a_file_output_appears_only_on_commit(tmp_path):
    with Output(tmp_path / "m.pt", folder=False, what="checkpoint") as output:
        atomic_write_text(output.staging, "weights")
        assert listing(tmp_path) == [".m.pt.lock", output.staging.name]
        output.commit()
    assert listing(tmp_path) == ["m.pt"] and (tmp_path / "m.pt").read_text() == "weights"


def test_an_existing_output_needs_force_and_the_right_kind(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(CompressorError, match="already exists; pass --force"):
        Output(tmp_path / "out", folder=True, what="output folder")
    with pytest.raises(CompressorError, match="is a folder; it cannot be replaced by a file"):
        Output(tmp_path / "out", folder=False, what="checkpoint", force=True)
    (tmp_path / "m.pt").write_text("x")
    with pytest.raises(CompressorError, match="is not a folder"):
        Output(tmp_path / "m.pt", folder=True, what="output folder", force=True)
    assert listing(tmp_path) == ["m.pt", "out"]


def test_force_never_replaces_the_current_folder_or_one_holding_an_input(tmp_path, monkeypatch):
    inner = tmp_path / "out" / "inner"
    inner.mkdir(parents=True)
    (inner / "model.pt").write_text("x")
    monkeypatch.chdir(inner)
    for destination in (".", "..", tmp_path / "out"):
        with pytest.raises(CompressorError, match="holds the current folder"):
            Output(destination, folder=True, what="output folder", force=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CompressorError, match="holds the input .*model.pt"):
        Output("out", folder=True, what="output folder", force=True, inputs=["out/inner/model.pt", None])
    assert listing(tmp_path) == ["out"] and listing(inner) == ["model.pt"]


def test_a_retired_folder_left_by_a_crash_does_not_block_commit(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / ".out.old").mkdir()
    (tmp_path / ".out.old" / "stale").write_text("x")
    with Output(tmp_path / "out", folder=True, what="output folder", force=True) as output:
        (output.staging / "model.onnx").write_text("new")
        output.commit()
    assert listing(tmp_path) == ["out"]


def _hold_lock_in_another_process(destination):
    """Start a process that holds `destination`'s lock until its stdin closes; return it once it holds it."""
    code = textwrap.dedent(f"""
        import sys
        from compressor.files import Output
        with Output({str(destination)!r}, folder=True, what="output folder"):
            print("locked", flush=True)
            sys.stdin.read()
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_writer_is_refused_with_the_first_ones_pid(tmp_path):
    holder = _hold_lock_in_another_process(tmp_path / "out")
    try:
        with pytest.raises(CompressorError, match=rf"being written by another run \(pid {holder.pid}\)"):
            Output(tmp_path / "out", folder=True, what="output folder", force=True)
        assert (tmp_path / ".out.partial").is_dir(), "the refused run must not touch the first run's staging"
    finally:
        holder.communicate("")
    assert holder.returncode == 0
    with Output(tmp_path / "out", folder=True, what="output folder") as output:
        output.commit()


def test_a_lock_file_left_by_a_killed_run_does_not_block(tmp_path):
    (tmp_path / ".out.lock").write_text("99999999\n")
    with Output(tmp_path / "out", folder=True, what="output folder") as output:
        output.commit()
    assert listing(tmp_path) == ["out"]


@pytest.mark.parametrize("folder", [True, False], ids=["folder", "file"])
def test_an_output_that_appears_during_the_run_is_not_replaced(tmp_path, folder):
    destination = tmp_path / "out"
    with pytest.raises(CompressorError, match="appeared while this run was writing it and was not replaced"):
        with Output(destination, folder=folder, what="output") as output:
            atomic_write_text(output.staging / "report.md" if folder else output.staging, "ours")
            if folder:
                destination.mkdir()
                (destination / "theirs.txt").write_text("theirs")
            else:
                destination.write_text("theirs")
            output.commit()
    assert (destination / "theirs.txt" if folder else destination).read_text() == "theirs"
    assert (output.staging / "report.md" if folder else output.staging).read_text() == "ours"


def test_parent_folders_made_for_a_failed_run_are_removed(tmp_path):
    with pytest.raises(CompressorError, match="no data"):
        with Output(tmp_path / "a" / "b" / "out", folder=True, what="output folder"):
            raise CompressorError("no data")
    assert listing(tmp_path) == []
    with Output(tmp_path / "a" / "b" / "out", folder=True, what="output folder") as output:
        output.commit()
    assert listing(tmp_path / "a" / "b") == ["out"]


def test_a_parent_that_cannot_be_made_is_refused_in_one_line(tmp_path):
    (tmp_path / "plain.txt").write_text("x")
    with pytest.raises(CompressorError, match="plain.txt is not a writable folder"):
        Output(tmp_path / "plain.txt" / "out", folder=True, what="output folder")
    with pytest.raises(CompressorError, match=r"cannot create /proc/\S+ \("):
        Output(f"/proc/compressor-{os.getpid()}/out.pt", folder=False, what="checkpoint")


def test_not_enough_free_space_is_refused_up_front():
    with small_disk(2) as disk:
        with Output(disk / "out", folder=True, what="output folder") as output:
            with pytest.raises(CompressorError, match=r"the run writes about \d+ MB and \d+ MB are free"):
                output.require_space(8 * 2**20)
        assert listing(disk) == []


def _failing_run_with_state(destination, error):
    with Output(destination, folder=True, what="output folder") as output:
        output.state.write_text("epoch 2")
        (output.staging / "model.onnx").write_text("half")
        raise error


def test_a_failure_keeps_the_resume_state_and_says_so(tmp_path):
    with pytest.raises(CompressorError, match=r"No space left on device; the training state is kept in .*"
                                              r"train-state.pt: fix that and run again with --resume"):
        _failing_run_with_state(tmp_path / "out", CompressorError("cannot write x: No space left on device"))
    assert listing(tmp_path) == [".out.partial"] and listing(tmp_path / ".out.partial") == [STATE_FILE]


def test_a_refused_resume_and_an_interrupt_keep_the_state_as_they_are(tmp_path):
    with pytest.raises(ResumeRefused, match="^different settings$"):
        _failing_run_with_state(tmp_path / "out", ResumeRefused("different settings"))
    with pytest.raises(KeyboardInterrupt):
        _failing_run_with_state(tmp_path / "out", KeyboardInterrupt())
    assert listing(tmp_path / ".out.partial") == [STATE_FILE]


def test_a_new_run_keeps_an_old_state_until_it_trains_and_a_commit_deletes_it(tmp_path):
    (tmp_path / ".out.partial").mkdir()
    (tmp_path / ".out.partial" / STATE_FILE).write_text("epoch 2")
    (tmp_path / ".out.partial" / "model.onnx").write_text("stale")
    with Output(tmp_path / "out", folder=True, what="output folder") as output:
        assert listing(output.staging) == [STATE_FILE]
        (output.staging / "model.onnx").write_text("new")
        output.commit()
    assert listing(tmp_path) == ["out"] and listing(tmp_path / "out") == ["model.onnx"]


def test_a_resumed_run_may_replace_the_output_of_the_run_it_continues(tmp_path):
    (tmp_path / "m.pt").write_text("old")
    sibling(tmp_path / "m.pt", "train-state").write_text("epoch 1")
    with pytest.raises(CompressorError, match="--force"):
        Output(tmp_path / "m.pt", folder=False, what="checkpoint")
    with Output(tmp_path / "m.pt", folder=False, what="checkpoint", resume=True) as output:
        atomic_write_text(output.staging, "new")
        output.commit()
    assert listing(tmp_path) == ["m.pt"] and (tmp_path / "m.pt").read_text() == "new"


def test_a_move_that_fails_keeps_the_result_and_the_state(tmp_path, monkeypatch):
    with pytest.raises(CompressorError, match=r"cannot move the result into .*out: Device or resource busy; it is "
                                              r"in .*\.out\.partial; the training state is kept"):
        with Output(tmp_path / "out", folder=True, what="output folder") as output:
            output.state.write_text("epoch 3")
            (output.staging / "model.onnx").write_text("done")
            monkeypatch.setattr(os, "rename", busy)
            output.commit()
    monkeypatch.undo()
    assert listing(tmp_path) == [".out.partial"]
    assert listing(tmp_path / ".out.partial") == ["model.onnx", STATE_FILE]


def busy(source, destination):
    raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(destination))


class PassLikeError(CompressorError):
    """An error whose constructor takes more than a message, as the pipeline's pass errors do."""

    def __init__(self, name, cause):
        super().__init__(f"pass {name} failed: {cause}")


def test_the_state_hint_is_added_to_any_error_without_a_traceback(tmp_path):
    with pytest.raises(CompressorError, match=r"^pass BakeMasks failed: boom; the training state is kept"):
        _failing_run_with_state(tmp_path / "out", PassLikeError("BakeMasks", "boom"))


def test_links_at_the_lock_or_staging_names_are_not_followed(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    (tmp_path / "work").mkdir()
    os.symlink(precious / "keep.txt", tmp_path / "work" / ".out.lock")
    with pytest.raises(CompressorError, match="cannot write output folder"):
        Output(tmp_path / "work" / "out", folder=True, what="output folder")
    os.unlink(tmp_path / "work" / ".out.lock")
    os.symlink(precious, tmp_path / "work" / ".out.partial")
    with Output(tmp_path / "work" / "out", folder=True, what="output folder") as output:
        output.commit()
    assert listing(precious) == ["keep.txt"] and (precious / "keep.txt").read_text() == "mine"


def test_an_output_goes_where_the_os_resolves_its_path(tmp_path, monkeypatch):
    # `link/..` is the folder above the link's target for the OS, not the current folder.
    (tmp_path / "elsewhere" / "inner").mkdir(parents=True)
    (tmp_path / "here").mkdir()
    os.symlink(tmp_path / "elsewhere" / "inner", tmp_path / "here" / "link")
    monkeypatch.chdir(tmp_path / "here")
    with Output("link/../out", folder=True, what="output folder") as output:
        assert output.staging == tmp_path / "elsewhere" / ".out.partial"
        (output.staging / "model.onnx").write_text("x")
        assert output.commit() == Path("link/../out")
    assert listing(tmp_path / "elsewhere") == ["inner", "out"] and listing(tmp_path / "here") == ["link"]
