"""Atomic file output.

Every file the tool writes goes through here: content is written to a temporary file in the same folder and
renamed over the destination, so an interrupted or failed run never leaves a half-written model or report.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch

from compressor.errors import CompressorError


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` and move the result to `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # mkstemp creates owner-only files; give the result the permissions a plain open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes to `path` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text to `path` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_torch_save(obj: object, path: str | os.PathLike, pickle_module: ModuleType | None = None) -> Path:
    """`torch.save` to `path` atomically, with `pickle_module` (torch's default, pickle, when None)."""
    options = {} if pickle_module is None else {"pickle_module": pickle_module}
    return atomic_write(path, lambda tmp: torch.save(obj, tmp, **options))


def check_writable_destination(path: str | os.PathLike, force: bool, what: str = "output") -> Path:
    """Refuse, before any work starts, a destination that exists (without `force`) or cannot be written."""
    path = Path(path)
    if path.exists() and not force:
        raise CompressorError(f"{what} {path} already exists; pass --force to replace it")
    ancestor = path.parent.resolve()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise CompressorError(f"cannot write {what} {path}: {ancestor} is not a writable folder")
    return path


class StagedFolder:
    """An output folder that appears complete or not at all.

    Files are written into a hidden sibling `.NAME.partial`, which also holds the resume state of an
    interrupted run; `commit()` swaps it into place (replacing an old folder only when `force` allowed it).
    """

    def __init__(self, destination: str | os.PathLike, force: bool = False, resume: bool = False):
        self.destination = check_writable_destination(destination, force, "output folder")
        if self.destination.exists() and not self.destination.is_dir():
            raise CompressorError(f"output {self.destination} exists and is not a folder")
        self.staging = self.destination.parent / f".{self.destination.name}.partial"
        try:
            if self.staging.exists() and not resume:
                shutil.rmtree(self.staging)
            self.staging.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CompressorError(f"cannot write output folder {self.destination}: {error.strerror}") from None

    def commit(self) -> Path:
        retired = self.destination.parent / f".{self.destination.name}.old"
        # A retired folder left by a run that crashed mid-commit would block the rename below.
        if retired.exists():
            shutil.rmtree(retired)
        if self.destination.exists():
            os.replace(self.destination, retired)
        os.replace(self.staging, self.destination)
        if retired.exists():
            shutil.rmtree(retired)
        return self.destination

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
