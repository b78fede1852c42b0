"""Output paths are checked before a command writes anything: none may resolve to one of the
command's inputs or to another of its outputs (so ``out=X.ckpt`` cannot replace the
checkpoint X.ckpt), none may be an existing folder where a file is to be written, and the
folder each goes to must be writable (or creatable). An existing file is replaced only when
the user asks (``overwrite=true``), and then only if it is of the kind the command writes:
tbnn never replaces a file it did not write for this command (another run's checkpoint, say)."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import PathError


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _writable_parent(p: Path) -> Path | None:
    """The nearest existing folder above ``p`` if it cannot be written to, else None."""
    parent = p.resolve().parent
    while not parent.exists():
        parent = parent.parent
    return None if os.access(parent, os.W_OK | os.X_OK) else parent


def check_outputs(inputs: dict[str, str | Path | None], outputs: dict[str, str | Path | None],
                  folders: tuple[str, ...] = (), kinds: dict | None = None, overwrite: bool = False) -> None:
    """Refuse (PathError) an output that resolves to an input or to another output, a file
    output that is an existing folder, or one whose folder cannot be written. ``inputs`` and
    ``outputs`` map a name for the message (e.g. ``ckpt_path``) to a path; None is skipped;
    ``folders`` names the outputs that are folders, not files. ``kinds`` maps a file output
    to ``(description, test(path) -> bool)``: such an output that exists is refused unless
    ``overwrite`` and the existing file passes the test."""
    ins = {k: Path(v).expanduser() for k, v in inputs.items() if v}
    outs = {k: Path(v).expanduser() for k, v in outputs.items() if v}
    seen: dict[str, Path] = {}
    for key, out in outs.items():
        for ikey, inp in ins.items():
            if _same(out, inp):
                raise PathError(f"{key}={out} is the same file as {ikey}={inp}; writing it would destroy the "
                                f"input. Choose another {key}")
        for okey, other in seen.items():
            if _same(out, other):
                raise PathError(f"{key}={out} and {okey}={other} are the same file; give each output its own path")
        seen[key] = out
        if key not in folders and out.is_dir():
            raise PathError(f"{key}={out} is an existing folder; give the path of a file to write")
        if key in folders and out.exists() and not out.is_dir():
            raise PathError(f"{key}={out} is an existing file; give a folder")
        if kinds and key in kinds and out.is_file():
            what, is_kind = kinds[key]
            if not overwrite:
                raise PathError(f"{key}={out} exists; pass overwrite=true to replace it, or choose another {key}")
            if not is_kind(out):
                raise PathError(f"{key}={out} exists and is not {what}; tbnn replaces only a file of the kind it "
                                "writes, even with overwrite=true. Choose another path")
        blocked = _writable_parent(out / "x" if key in folders else out)
        if blocked is not None:
            raise PathError(f"{key}={out}: cannot write in {blocked} (permission denied or read-only); "
                            "choose a writable place")
