"""File output: atomic writes, and the protocol every verb follows for what it writes.

Every file the tool writes goes through `atomic_write`: content is written to a temporary file in the same
folder and renamed over the destination, so an interrupted or failed run never leaves a half-written model or
report, and an OS error while writing (a full disk, a quota) is one line naming the file.

Every output a verb is asked for (`compress --out`, `train -o`, `deploy -o`, `bench --json/--plot`) is an
`Output`: checked before any work (a name the file system accepts, a folder that can be written, an existing
output only with --force, never the current folder or one holding an input), locked for the whole run so a
second run on the same destination is refused at once, written into a staging sibling and moved into place
at the end without replacing anything that appeared meanwhile unless --force allows it. A run's resume state
lives beside its output under the same lock and is only ever deleted when the output is in place.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Callable, Iterable

import torch

from compressor.errors import CompressorError, ResumeRefused, printable, quoted

# Fallbacks for a file system that does not say its limits (os.pathconf fails); Linux's usual values.
_DEFAULT_NAME_MAX = 255
_DEFAULT_PATH_MAX = 4096
# Room kept under PATH_MAX for what is written inside an output folder (its staging sibling, `train-state.pt`,
# the temporary names of atomic writes), so a folder path that is accepted can hold every file of the run.
_INNER_PATH_ROOM = 64
# tempfile.mkstemp adds 8 random characters between prefix and suffix.
_TEMP_SUFFIX = ".tmp"
_TEMP_RANDOM = 8
_MB = 2**20
# Extra room asked for beyond a verb's estimate: reports, plots and file system overhead.
SPACE_MARGIN = 4 * _MB
STATE_FILE = "train-state.pt"


def _limit(folder: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(folder, name)
    except (OSError, ValueError):
        return default


def _existing_ancestor(path: Path) -> Path:
    """The nearest folder above `path` (or `path` itself) that exists; the root always does."""
    ancestor = path
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    return ancestor


def _fitted_name(stem: str, suffix: str, limit: int) -> str:
    """`stem + suffix`, with the stem cut and tagged with a hash of itself when the whole is longer than
    `limit` bytes, so a sibling of a name near the file system's limit is still a valid name (and the same
    name on every run, which is how a resumed run finds its state)."""
    name = stem + suffix
    if len(os.fsencode(name)) <= limit:
        return name
    tag = "~" + hashlib.sha256(os.fsencode(stem)).hexdigest()[:12]
    room = limit - len(os.fsencode(tag + suffix))
    while len(os.fsencode(stem)) > room:
        stem = stem[:-1]
    return stem + tag + suffix


def located(path: str | os.PathLike) -> Path:
    """`path` with its folder resolved as the OS resolves it (links first, then `..`), so `link/../out` is where
    the OS would write it, not the lexical `./out`; the name itself stays (a link there is the output)."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        return Path(os.path.realpath(path))
    return Path(os.path.realpath(path.parent)) / path.name


def sibling(path: str | os.PathLike, tag: str) -> Path:
    """The hidden file or folder `.NAME.tag` beside `path`, shortened to fit the file system's name limit."""
    path = located(path)
    limit = _limit(_existing_ancestor(path.parent), "PC_NAME_MAX", _DEFAULT_NAME_MAX)
    return path.parent / _fitted_name(f".{path.name}", f".{tag}", limit)


def check_name(path: str | os.PathLike, what: str) -> None:
    """Refuse a path the OS would refuse for its length, before any work, in one line."""
    absolute = located(path)
    folder = _existing_ancestor(absolute.parent)
    name_max = _limit(folder, "PC_NAME_MAX", _DEFAULT_NAME_MAX)
    for part in absolute.parts:
        size = len(os.fsencode(part))
        if size > name_max:
            raise CompressorError(f"cannot write {what} {quoted(path)}: the name {quoted(part)} is {size} bytes "
                                  f"and this file system allows {name_max}")
    path_max = _limit(folder, "PC_PATH_MAX", _DEFAULT_PATH_MAX)
    size = len(os.fsencode(os.fspath(path)))
    if size + _INNER_PATH_ROOM > path_max:
        raise CompressorError(f"cannot write {what} {quoted(path)}: the path is {size} bytes; paths here are "
                              f"limited to {path_max} bytes and the run needs {_INNER_PATH_ROOM} of them for the "
                              "files inside")


def write_error(path: str | os.PathLike, error: OSError) -> CompressorError:
    """The one-line error for an OS error while writing `path`."""
    return CompressorError(f"cannot write {quoted(path)}: {error.strerror or error}")


class _RecordingFile:
    """A binary file that remembers the OS error of a failed write.

    torch.save reports a failed write (a full disk) as a RuntimeError about stream positions; the error kept
    here is the cause to report instead.
    """

    def __init__(self, stream):
        self.stream = stream
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.stream.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.stream.flush()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` and move the result to `path` in one rename.

    An OS error while writing becomes a one-line CompressorError, and nothing is left behind.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        limit = _limit(path.parent, "PC_NAME_MAX", _DEFAULT_NAME_MAX)
        prefix = _fitted_name(f".{path.name}", ".", limit - _TEMP_RANDOM - len(_TEMP_SUFFIX))
        fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=_TEMP_SUFFIX, dir=path.parent)
    except OSError as error:
        raise write_error(path, error) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # mkstemp creates owner-only files; give the result the permissions a plain open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise write_error(path, error) from None
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
    """Write text to `path` atomically as UTF-8, with what UTF-8 cannot hold escaped (see `printable`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(printable(text), encoding="utf-8"))


def atomic_torch_save(obj: object, path: str | os.PathLike, pickle_module: ModuleType | None = None) -> Path:
    """`torch.save` to `path` atomically, with `pickle_module` (torch's default, pickle, when None)."""
    options = {} if pickle_module is None else {"pickle_module": pickle_module}

    def save(tmp: Path) -> None:
        with tmp.open("wb") as stream:
            recording = _RecordingFile(stream)
            try:
                torch.save(obj, recording, **options)
            except RuntimeError:
                if recording.error is not None:
                    raise recording.error from None
                raise

    return atomic_write(path, save)


def state_location(path: str | os.PathLike, folder: bool) -> Path:
    """Where the resume state of the output `path` lives: inside the staging folder of a folder output, beside
    a file output. Processes of a data-parallel run that write no output read it from here."""
    return sibling(path, "partial") / STATE_FILE if folder else sibling(path, "train-state")


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes free to an unprivileged writer on the file system that holds `path` (or would hold it)."""
    return shutil.disk_usage(_existing_ancestor(located(path))).free


class _Lock:
    """An exclusive lock on a destination, held through a `.NAME.lock` file beside it.

    The kernel releases the lock when its holder exits in any way (kill -9 included), so a lock file left by
    a dead run never blocks the next one. The file holds the holder's pid, to name it in the refusal.
    """

    def __init__(self, path: Path, destination: Path, what: str):
        self.path = path
        while True:
            try:
                # O_NOFOLLOW: a link planted at the lock's name must not make us truncate what it points to.
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
            except OSError as error:
                raise CompressorError(f"cannot write {what} {quoted(destination)}: "
                                      f"{error.strerror or error}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode("ascii", "replace").strip()
                os.close(fd)
                raise CompressorError(f"{what} {quoted(destination)} is being written by another run "
                                      f"(pid {holder or 'unknown'}); wait for it to finish or choose another "
                                      "output") from None
            except OSError as error:
                os.close(fd)
                raise CompressorError(f"cannot lock {what} {quoted(destination)}: {error.strerror}") from None
            # A holder deletes the file as it lets go: if that happened between our open and our lock, we hold
            # a file nobody else will look at, and must lock the one now at the path.
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(current, os.fstat(fd)):
                break
            os.close(fd)
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        except OSError:  # a full disk: the lock holds without the pid, which only the refusal message shows
            pass

    def release(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:  # already gone, or the folder became unwritable: the kernel still drops the lock
            pass
        os.close(self.fd)


class Output:
    """One output of a run, a file or a folder, under the protocol described in the module docstring.

    Use it as a context manager: write into `staging` (a file path or a folder), keep the resume state at
    `state`, call `commit()` when everything is written. Leaving the block without a commit (an error, an
    interrupt) removes what was staged but keeps the resume state, and any folders the output created.
    `inputs` are the files the run reads; --force never replaces a folder that holds one of them.
    """

    def __init__(self, path: str | os.PathLike, *, folder: bool, what: str, force: bool = False,
                 resume: bool = False, inputs: Iterable[str | os.PathLike | None] = ()):
        self.destination = Path(path)
        # Where the OS puts it: every file operation goes here; messages show the path as the user gave it.
        self._target = located(path)
        self.folder = folder
        self.what = what
        self.staging = sibling(path, "partial")
        self.state = state_location(path, folder)
        self._keep_staging = False
        self._committed = False
        self._created: list[Path] = []
        check_name(path, what)
        self._check_parent()
        try:
            self._lock = _Lock(sibling(path, "lock"), self.destination, what)
        except BaseException:
            self._remove_created_folders()
            raise
        # A resumed run continues one that was allowed to write here, so it may replace what it finds.
        self._replace = force or (resume and self.state.exists())
        try:
            self._check_destination([p for p in inputs if p])
            self._prepare_staging()
        except BaseException:
            self._release()
            raise

    def _check_parent(self) -> None:
        parent = self._target.parent
        ancestor = _existing_ancestor(parent)
        if not ancestor.is_dir():
            raise CompressorError(f"cannot write {self.what} {quoted(self.destination)}: {quoted(ancestor)} is not "
                                  "a writable folder")
        missing = []
        while parent != ancestor:
            missing.append(parent)
            parent = parent.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            except OSError as error:
                self._remove_created_folders()
                raise CompressorError(f"cannot write {self.what} {quoted(self.destination)}: cannot create "
                                      f"{quoted(folder)} ({error.strerror})") from None
            self._created.append(folder)

    def _check_destination(self, inputs: list) -> None:
        destination, shown = self._target, quoted(self.destination)
        if not os.path.lexists(destination):
            return
        if not self._replace:
            raise CompressorError(f"{self.what} {shown} already exists; pass --force to replace it")
        if destination.is_dir() != self.folder:
            kind = "a folder" if destination.is_dir() else "not a folder"
            raise CompressorError(f"{self.what} {shown} exists and is {kind}; it cannot be replaced "
                                  f"by a {'folder' if self.folder else 'file'}")
        if not destination.is_dir() or destination.is_symlink():
            return
        target = Path(os.path.realpath(destination))
        inside = [Path(os.path.realpath(os.getcwd()))] + [Path(os.path.realpath(p)) for p in inputs]
        for path in inside:
            if path == target or target in path.parents:
                held = "the current folder" if path == inside[0] else f"the input {quoted(path)}"
                raise CompressorError(f"--force would replace {shown}, which holds {held}; choose "
                                      "another output folder")

    def _prepare_staging(self) -> None:
        """Clear what an earlier run staged, keeping only a resume state, which a fresh run discards itself
        when its training starts (so a run refused before then has lost nothing)."""
        staging = self.staging
        try:
            if self.folder:
                # A link at the staging name is not ours to clear through: remove the link itself.
                if os.path.lexists(staging) and (staging.is_symlink() or not staging.is_dir()):
                    staging.unlink()
                staging.mkdir(exist_ok=True)
                self._clear_staging()
            elif os.path.lexists(staging):
                _remove(staging)
        except OSError as error:
            raise CompressorError(f"cannot write {self.what} {quoted(self.destination)}: {error.strerror} "
                                  f"({quoted(staging)})") from None

    def _clear_staging(self) -> None:
        for entry in self.staging.iterdir():
            if entry.name != STATE_FILE:
                _remove(entry)

    def require_space(self, estimate: int) -> None:
        """Refuse the run when the file system has less free space than `estimate` bytes plus a margin."""
        needed = estimate + SPACE_MARGIN
        free = free_bytes(self.staging)
        if free < needed:
            raise CompressorError(f"not enough free space for {self.what} {quoted(self.destination)}: the run "
                                  f"writes about {needed / _MB:.0f} MB and {free / _MB:.0f} MB are free")

    def commit(self) -> Path:
        """Move the staged result into place and delete the resume state: the run is complete.

        Without --force, a destination that appeared during the run is not replaced: the result stays in
        `staging`, and the error says so.
        """
        # The state leaves the staging folder before the move and is deleted only after it: a move that fails
        # (a mount point, a destination that appeared) keeps both the result and the state.
        held = sibling(self._target, "train-state") if self.folder else self.state
        try:
            if self.folder and self.state.exists():
                os.replace(self.state, held)
            try:
                if os.path.lexists(self._target) and not self._replace:
                    raise FileExistsError(errno.EEXIST, "exists")
                self._move_into_place()
            except BaseException:
                if self.folder and held.exists():
                    os.replace(held, self.state)
                raise
            held.unlink(missing_ok=True)
        except FileExistsError:
            self._keep_staging = True
            raise CompressorError(f"{self.what} {quoted(self.destination)} appeared while this run was writing "
                                  f"it and was not replaced; the result is in {quoted(self.staging)}: move it "
                                  "into place, or run again with --force") from None
        except OSError as error:
            self._keep_staging = True
            raise CompressorError(f"cannot move the result into {quoted(self.destination)}: "
                                  f"{error.strerror or error}; it is in {quoted(self.staging)}") from None
        self._committed = True
        return self.destination

    def _move_into_place(self) -> None:
        destination, staging = self._target, self.staging
        if not self._replace:
            if self.folder:
                # rename(2) refuses a non-empty folder in the way; an empty one, made since the check above,
                # is replaced, and nothing is lost with it.
                try:
                    os.rename(staging, destination)
                except OSError as error:
                    if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
                        raise FileExistsError(error.errno, error.strerror) from None
                    raise
                return
            # link(2) never replaces: the file appears only if nothing is there.
            try:
                os.link(staging, destination)
            except FileExistsError:
                raise
            except OSError:  # a file system without hard links: the check in commit() is what is left
                os.rename(staging, destination)
                return
            staging.unlink()
            return
        if not self.folder or not os.path.lexists(destination):
            os.replace(staging, destination)
            return
        retired = sibling(destination, "old")
        if os.path.lexists(retired):  # left by a run that died mid-commit; we hold the lock, it is no one's
            _remove(retired)
        os.rename(destination, retired)
        try:
            os.rename(staging, destination)
        except BaseException:  # an OS error, or an interrupt between the renames: the old output goes back
            os.rename(retired, destination)
            raise
        _remove(retired)

    def __enter__(self) -> "Output":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if not self._committed and not self._keep_staging:
            self._discard()
        self._release()
        if error is None or self._committed:
            return
        if isinstance(error, CompressorError) and not isinstance(error, ResumeRefused) and self.state.exists():
            raise CompressorError(f"{error}; the training state is kept in {quoted(self.state)}: fix that and run "
                                  "again with --resume to continue") from error

    def _discard(self) -> None:
        """Remove what was staged, keeping a resume state."""
        try:
            if self.folder and self.staging.is_dir():
                self._clear_staging()
                if not self.state.exists():
                    self.staging.rmdir()
            elif os.path.lexists(self.staging):
                _remove(self.staging)
        except OSError:  # cleanup must not hide the error that ended the run
            pass

    def _release(self) -> None:
        self._lock.release()
        self._remove_created_folders()

    def _remove_created_folders(self) -> None:
        """Remove the folders made for this output that are still empty: those of a run that wrote nothing."""
        for folder in reversed(self._created):
            try:
                folder.rmdir()
            except OSError:
                break


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
