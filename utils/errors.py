"""One exception type for everything a user can cause (bad file, bad flag, missing data).

Scripts catch it and print its message as one line; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""
