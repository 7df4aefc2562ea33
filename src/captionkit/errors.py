"""The one exception type users see.

Anything a user can cause (a missing path, an unknown format, an image that cannot be read) raises
`CaptionkitError` with a message that names the file and the problem. The CLI prints it as one line;
everything else is a bug and keeps its traceback.
"""


class CaptionkitError(Exception):
    """A problem with the user's input or environment, explained in one line."""
