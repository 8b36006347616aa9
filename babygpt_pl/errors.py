"""The one exception type for mistakes a user can fix.

It subclasses ValueError, so library callers may catch either. The CLI prints its message as a single line
(no traceback) and exits non-zero, so every message names the problem and the fix.
"""


class UserError(ValueError):
    """A bad input, file or setting; the message says what is wrong and how to fix it."""
