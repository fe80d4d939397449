"""User-facing errors.

Anything the user can fix (a bad config value, a missing model, a corrupt checkpoint) raises
``UserError``; the command-line entry points print its message on one line and exit with code 2,
so a researcher never has to read a traceback from deep inside a library.
"""


class UserError(Exception):
    """An error caused by the user's input, reported as one line without a traceback."""
