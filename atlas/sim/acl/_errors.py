"""The internal failure signal: raised inside an API function, returned to the caller as the real code."""
from __future__ import annotations


class Fail(Exception):
    """Raised inside an API function: the call returns `code`; `why` is kept in the counters."""

    def __init__(self, code: int, why: str):
        super().__init__(why)
        self.code = code
        self.why = why
