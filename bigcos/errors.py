"""The one exception type that means "the user asked for something impossible".

The CLI turns a :class:`UserError` into a one-line message and a non-zero exit; any other
exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the input or the options, described in one line naming the culprit.

    Library code names the *parameter* (``parameter="k"``), as a Python or TOML user spells
    it; the command line adds the flag that sets it.
    """

    def __init__(self, message: str, parameter: str | None = None):
        super().__init__(message)
        self.parameter = parameter
