"""User-facing errors.

`CompressorError` is raised for anything the person running the tool can fix (a missing file, a bad option,
data that doesn't fit the model). The CLI turns it into one line on stderr and exit code 2; everything else
is a bug and keeps its traceback.
"""


class CompressorError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


class VerificationError(CompressorError):
    """A compiled or exported model differs from the model it came from beyond tolerance, or a counted fact
    does not match."""


def one_line(text: object) -> str:
    """A message folded onto one line, for libraries whose messages span several."""
    return " ".join(str(text).split())


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (its type's name when it has none), for one-line
    errors built from a library's multi-line ones."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
