"""A run folder belongs to one job at a time, holds one run, and is written only once the
job has validated everything.

- ``claim()`` locks the folder (an flock on ``.tbnn.lock``, released however the process
  ends, kill -9 included); a second job is refused with a message naming the holder.
- A folder that already holds a run (checkpoints, metrics, configs, logs) is refused unless
  the job resumes it (``resume=``) or asks to start over (``rerun=true``: what was there is
  moved to ``previous/<time>/``, never deleted).
- The file names are declared in ``tbnn.layout``.
- Hydra's own writing of ``.hydra/`` is turned off (``hydra.output_subdir: null``); the job
  writes ``.hydra/`` (config, overrides, Hydra's settings) itself, atomically, after its checks.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .atomic import atomic_write_text
from .errors import RunDirError
from .layout import HYDRA_DIR, LOCATION_OVERRIDES, LOCK, PREVIOUS, RECORD, RUN_FILES


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    def outputs(self) -> list[str]:
        """The run files already in the folder (an empty checkpoints/ does not count)."""
        found = []
        for name in RUN_FILES:
            p = self.path / name
            if p.is_file() or (p.is_dir() and any(p.iterdir())):
                found.append(name)
        return found

    @contextmanager
    def claim(self, *, resuming: bool = False, rerun: bool = False):
        """Hold the folder for this job (see the module docstring). The other processes of a
        multi-process job (DDP ranks > 0, which Lightning starts with the same folder) use it
        as it is."""
        from lightning.pytorch.utilities.rank_zero import rank_zero_only

        if rank_zero_only.rank != 0:
            yield self
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            existing = self.outputs()
            if existing and not resuming:
                if not rerun:
                    raise RunDirError(
                        f"{self.path} already holds a run ({', '.join(existing)}). Continue it with "
                        f"resume={self.path}, start over there with rerun=true (its files are moved to "
                        f"previous/), or choose another folder (hydra.run.dir=DIR)")
                self.move_aside(existing)
            yield self
        finally:
            self._unlock()

    def _lock(self) -> None:
        lock = self.path / LOCK
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode(errors="replace")
                os.close(fd)
                raise RunDirError(f"{self.path} is in use by another job ({_describe(holder)}); wait for it to "
                                  "end or choose another folder (hydra.run.dir=DIR)") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a lock file that its holder removed while we waited on it
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._fd = fd

    def holder(self) -> str | None:
        """Who holds the folder's lock now (None if no live job does)."""
        lock = self.path / LOCK
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        except BlockingIOError:
            return _describe(os.read(fd, 4096).decode(errors="replace"))
        finally:
            os.close(fd)

    def _unlock(self) -> None:
        if self._fd is not None:
            (self.path / LOCK).unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    def move_aside(self, names: list[str]) -> Path:
        dest = self.path / PREVIOUS / time.strftime("%Y-%m-%d_%H-%M-%S")
        dest.mkdir(parents=True, exist_ok=False)
        for name in names:
            os.replace(self.path / name, dest / name)
        print(f"rerun: moved the earlier run's {', '.join(names)} to {dest}", file=sys.stderr)
        return dest

    def write_record(self, record) -> None:
        """The run record (``tbnn.record``), once, when a new run claims the folder."""
        from lightning.pytorch.utilities.rank_zero import rank_zero_only

        if rank_zero_only.rank == 0:
            atomic_write_text(self.path / RECORD, json.dumps(record.as_dict(), indent=2, default=str) + "\n")

    def write_config(self, cfg) -> None:
        """``.hydra/config.yaml``, ``overrides.yaml`` and ``hydra.yaml``, as Hydra would write them."""
        from hydra.core.hydra_config import HydraConfig
        from lightning.pytorch.utilities.rank_zero import rank_zero_only
        from omegaconf import OmegaConf

        if rank_zero_only.rank != 0:
            return
        d = self.path / HYDRA_DIR
        hc = HydraConfig.get()
        task = [o for o in hc.overrides.task if not o.startswith(LOCATION_OVERRIDES)]
        atomic_write_text(d / "config.yaml", OmegaConf.to_yaml(cfg))
        atomic_write_text(d / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(task)))
        atomic_write_text(d / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hc})))

    def remove_if_unused(self) -> None:
        """Remove the folder if it is empty and was created by this process (Hydra creates the
        run folder before the job's checks run; a refused job leaves nothing behind)."""
        try:
            if not any(self.path.iterdir()) and self.path.stat().st_ctime >= _process_start() - 1:
                self.path.rmdir()
        except (OSError, ValueError, StopIteration):
            pass


def _process_start() -> float:
    """This process's start time (Linux: /proc), to the second."""
    with open("/proc/self/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime since boot
    with open("/proc/stat") as f:
        boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _describe(holder: str) -> str:
    try:
        h = json.loads(holder)
        return f"pid {h['pid']} on {h['host']}, started {h['started']}: {h['command']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
