"""The one exception type that means "the user asked for something that cannot work".

Library code raises `UsageError` with a single line that says what is wrong and
how to fix it; the command line entry points print that line and exit with
status 2, without a traceback.
"""


class UsageError(ValueError):
  """Bad input from the user: a one-line, actionable message."""
