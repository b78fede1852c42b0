"""Turns the errors a user can fix into one clear line and a non-zero exit code."""
from __future__ import annotations

import sys

from .callbacks import NonFiniteLossError, RunInterrupted
from .data import DataFormatError, DataNotFoundError

#: exit codes: 2 bad config or input, 3 the run diverged (non-finite loss), 143 stopped by SIGTERM
USER_ERRORS = (ValueError, FileNotFoundError, DataNotFoundError, DataFormatError, PermissionError)


def run_guarded(fn, *args):
    try:
        return fn(*args)
    except RunInterrupted as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(143)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
