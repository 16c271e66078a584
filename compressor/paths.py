"""Looking up the paths a user names, with the OS's refusals as one-line errors.

`Path.is_file()` raises an OSError for a path the OS refuses to look up (a name too long for the file system,
a path longer than PATH_MAX, a folder that cannot be searched) instead of answering; `is_file` and `is_dir`
answer as it does for what exists and what does not, and turn a refusal into `cannot read WHAT NAME: REASON`.
Long names are shortened in messages (see `compressor.errors.quoted`), where a name refused for its length
would otherwise fill the screen.
"""

from __future__ import annotations

import os
import stat

from compressor.errors import CompressorError, first_line, quoted


def cannot_read(what: str, path: str | os.PathLike, error: OSError) -> CompressorError:
    """The one-line error for an input the OS would not look up or open: 'cannot read model NAME: REASON'."""
    return CompressorError(f"cannot read {what} {quoted(path)}: {error.strerror or first_line(error)}")


def is_file(path: str | os.PathLike, what: str) -> bool:
    """Whether `path` is a file (or a link to one); `what` names it in the error for a path the OS refuses."""
    return stat.S_ISREG(_mode(path, what))


def is_dir(path: str | os.PathLike, what: str) -> bool:
    """Whether `path` is a folder (or a link to one); `what` names it in the error for a path the OS refuses."""
    return stat.S_ISDIR(_mode(path, what))


def _mode(path: str | os.PathLike, what: str) -> int:
    """The file mode of `path`; 0 when nothing is there."""
    try:
        return os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # nothing there: the caller says what it expected
        return 0
    except ValueError:  # a NUL in the name: no file can have one
        return 0
    except OSError as error:
        raise cannot_read(what, path, error) from None
