"""User-facing errors.

`CompressorError` is raised for anything the person running the tool can fix (a missing file, a bad option,
data that doesn't fit the model). The CLI turns it into one line on stderr and exit code 2; everything else
is a bug and keeps its traceback.
"""


class CompressorError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""
