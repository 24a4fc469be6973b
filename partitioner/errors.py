"""The one exception type for user mistakes.

Every bad input (unknown target, invalid spec, uncapturable model, infeasible
limits) raises `PartitionerError` with a message that names the problem and
the fix; the CLI prints it as one line and exits with code 2.
"""


class PartitionerError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""
