"""Turns the errors a user can fix into one clear line and a non-zero exit code."""
from __future__ import annotations

import errno
import sys

from .callbacks import NonFiniteLossError, RunInterrupted
from .data import DataFormatError, DataNotFoundError

#: exit codes: 2 bad config or input, 3 the run diverged (non-finite loss), 143 stopped by SIGTERM
WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}
USER_ERRORS = (ValueError, FileNotFoundError, DataNotFoundError, DataFormatError)


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
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        print(f"error: cannot write {e.filename or 'the output'}: {e.strerror}. Free some space or write "
              "elsewhere (hydra.run.dir=DIR); files already written are intact (checkpoints are replaced "
              "atomically).", file=sys.stderr)
        sys.exit(2)
