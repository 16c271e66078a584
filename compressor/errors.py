"""User-facing errors.

`CompressorError` is raised for anything the person running the tool can fix (a missing file, a bad option,
data that doesn't fit the model). The CLI turns it into one line on stderr and exit code 2; everything else
is a bug and keeps its traceback.
"""

# Messages quote a long path by its start and end: a 4000-byte path in full is not readable on one line.
_QUOTE_LIMIT = 80


class CompressorError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


class VerificationError(CompressorError):
    """A compiled or exported model differs from the model it came from beyond tolerance, or a counted fact
    does not match."""


class ResumeRefused(CompressorError):
    """A `--resume` that cannot continue the state it found; the message says how to continue or discard it,
    and the state is left where it was."""


def one_line(text: object) -> str:
    """A message folded onto one line, for libraries whose messages span several."""
    return " ".join(str(text).split())


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (its type's name when it has none), for one-line
    errors built from a library's multi-line ones."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def printable(text: object) -> str:
    """`text` with what cannot be written as UTF-8 escaped: a file name's non-UTF-8 bytes, which Python holds
    as lone surrogates, become `\\xNN`, so reports and messages can show any name the OS accepts."""
    text = str(text)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no byte stands for: escape it as a code point
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def quoted(path: object) -> str:
    """A path for a one-line message: printable, and shortened in the middle when very long."""
    text = printable(path)
    if len(text) <= _QUOTE_LIMIT:
        return text
    half = (_QUOTE_LIMIT - 3) // 2
    return f"{text[:half]}...{text[-half:]}"
