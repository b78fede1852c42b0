"""The one place that turns errors into a message and an exit code, for every entry point
(train, eval, export, sweep, report). Codes (docs/errors.md): 2 bad input, 3 a diverged run,
128 + N stopped by signal N (``tbnn.errors``); a write that failed (full disk, read-only or
forbidden folder) is 2 as well. Anything else is a bug: its traceback is shown (exit 1), a
ValueError from torch during training included. The library's own ValueErrors (``binarize/``
is free of tbnn's errors) are turned into ConfigError where tbnn validates a config
(``tbnn.pipeline.as_config_error``), not here."""
from __future__ import annotations

import errno
import sys

from .errors import TbnnError

WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}


def exit_with(message: str, code: int):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def run_guarded(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; a user error ends the process with its message and exit code."""
    try:
        return fn(*args, **kwargs)
    except TbnnError as e:
        exit_with(str(e), e.exit_code)
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        exit_with(f"cannot write {e.filename or 'the output'}: {e.strerror}. Free some space or write elsewhere; "
                  "files already written are intact (every file is replaced atomically).", 2)
