"""The base class of every error that means bad input (kept free of heavy imports: the command line loads it first)."""


class DAWNInputError(ValueError):
    """
    Input that cannot be used: a missing or unreadable file, a value out of range, an image without a face.

    The message says what was wrong and what to do instead. The command line reports these (and missing files) as one
    line with exit status 2; any other exception is a bug and keeps its traceback.
    """


# What the command line, the batch runner and the demo report as the user's mistake, in one line.
USER_ERRORS = (DAWNInputError, FileNotFoundError)
