"""The one exception type that reaches the user as a one-line message and exit status 2."""


class UserError(Exception):
    """A problem with the user's input (data, config, paths), not a bug in edgecls."""
