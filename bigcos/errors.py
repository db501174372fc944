"""The one exception type that means "the user asked for something impossible".

The CLI turns a :class:`UserError` into a one-line message and a non-zero exit; any other
exception is a bug in bigcos and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the input or the options, described in one line naming the culprit."""
