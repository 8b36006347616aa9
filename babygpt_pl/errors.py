"""The one exception type for mistakes a user can fix.

The CLI catches it and prints its message as a single line (no traceback) and exits non-zero, so every
message should name the problem and the fix.
"""


class UserError(Exception):
    """A bad input, file or setting; the message says what is wrong and how to fix it."""
