"""One exception type for everything a user can fix: the CLI prints its message as one line."""


class UserError(Exception):
    """A problem with the user's input or environment (not a bug).

    `exit_code` follows the project's convention: 2 for bad input or a missing tool, 1 for a check that
    ran and failed (lint errors, verification below threshold), 3 when a board cannot be reached or the
    link kept dropping (re-running may pass).
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message
