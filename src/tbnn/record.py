"""The run record: what a run *is*, written once when its folder is claimed (``record.json``)
and stored in every checkpoint (as its ``hyper_parameters``), so that every later command
(resume, eval, export, sweep, report) derives from it and checks against it instead of
re-composing the config from a command line and today's defaults.

A record holds the whole resolved config, the Hydra group options chosen (the method and the
binarize preset among them), the data as it was read (name, where, normalisation, split, sizes,
image shape, classes and a fingerprint of the images), what the run was started from
(``ckpt_path=``), the tbnn version and the record's own version. It is plain data (JSON-able)
and is read without Hydra or Lightning.

Records of older versions are migrated on reading, one step per version (``MIGRATIONS``):
version 1 is what checkpoints of tbnn 0.1 up to this change stored (the module spec only); its
missing parts come from the run folder's ``.hydra/config.yaml`` where that exists, and are
listed in ``unknown`` otherwise (a check that needs them says so instead of guessing).
Version 3 moved the surrogates' parameters into ``binarize.surrogate_params``.
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from . import __version__
from .errors import CheckpointError, ResumeError

RECORD_VERSION = 4

#: keys a resumed run may change, with how: "any", "up" (only to a larger value) or "same data"
#: (data.root: another place holding the same images, checked by fingerprint). Everything else
#: would change what was already computed, or the meaning of the steps already taken.
RESUME_MAY_CHANGE = {
    "trainer.max_epochs": "up", "trainer.max_steps": "up", "trainer.max_time": "any",
    "trainer.accelerator": "any", "trainer.devices": "any", "trainer.num_nodes": "any", "trainer.strategy": "any",
    "trainer.enable_progress_bar": "any", "trainer.enable_model_summary": "any", "trainer.log_every_n_steps": "any",
    "logger": "any", "callbacks.progress_bar": "any", "data.num_workers": "any", "data.root": "same data",
    "test": "any", "task_name": "any",
}
#: keys that do not change a run's result: not part of a sweep run's identity
NOT_PART_OF_RESULT = ("logger", "callbacks.progress_bar", "trainer.enable_progress_bar",
                      "trainer.enable_model_summary", "trainer.log_every_n_steps", "data.num_workers", "resume",
                      "rerun", "task_name")
#: keys of a command, not of a run: never compared
COMMAND_KEYS = ("resume", "rerun", "hydra")


@dataclass
class RunRecord:
    config: dict                       # the whole resolved config (tbnn.config.TrainConfig as a dict)
    data: dict                         # the data as read (``data_record``)
    choices: dict = field(default_factory=dict)  # Hydra group options, e.g. {"binarize": "paper", "method": ...}
    started_from: dict | None = None   # ckpt_path=: {"path", "global_step", "epoch"}
    initialised_from: dict | None = None  # init_from=: what was loaded from where (checkpoints.init_weights)
    unknown: list = field(default_factory=list)  # parts a migrated record could not recover
    tbnn_version: str = __version__
    record_version: int = RECORD_VERSION

    # ---- views used by the code that builds the module ------------------------------------
    @property
    def model(self) -> dict:
        return self.config["model"]

    @property
    def binarize(self) -> dict:
        return self.config["binarize"]

    @property
    def optim(self) -> dict:
        return self.config["optim"]

    @property
    def distill(self) -> dict:
        return self.config.get("distill") or {}

    @property
    def num_classes(self) -> int:
        return self.data["num_classes"]

    @property
    def in_channels(self) -> int:
        return self.data["in_channels"]

    @property
    def input_size(self) -> int:
        return self.data["input_size"]

    @property
    def data_name(self) -> str:
        return self.data["name"]

    @property
    def method(self) -> str:
        """The method of the run: its ``method=`` option, else its binarize preset."""
        return self.choices.get("method") or self.choices.get("binarize") or "custom"

    def as_dict(self) -> dict:
        return copy.deepcopy(asdict(self))

    @classmethod
    def from_dict(cls, d: dict, config_file: Path | None = None) -> "RunRecord":
        """A record from its dict of any version (migrated; ``config_file``: the run folder's
        ``.hydra/config.yaml``, which fills what a version-1 record lacks)."""
        if not isinstance(d, dict):
            raise CheckpointError(f"not a run record: {type(d).__name__}")
        version = d.get("record_version", 1)
        if version > RECORD_VERSION:
            raise CheckpointError(f"the run record is of version {version}, written by a newer tbnn "
                                  f"({d.get('tbnn_version')}); this is tbnn {__version__}: upgrade tbnn")
        while version < RECORD_VERSION:
            d, version = MIGRATIONS[version](d, config_file), version + 1
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in names})
        except TypeError as e:
            raise CheckpointError(f"incomplete run record ({e})") from e

    @classmethod
    def for_task(cls, config: dict, num_classes: int, in_channels: int, input_size: int,
                 data_name: str = "custom") -> "RunRecord":
        """A record for library use without a data module: ``config`` needs the groups the
        module uses (model, binarize, optim; distill optional)."""
        data = {"name": data_name, "num_classes": num_classes, "in_channels": in_channels, "input_size": input_size,
                "mean": None, "std": None, "root": None, "train_fingerprint": None, "test_fingerprint": None}
        return cls(config=copy.deepcopy(dict(config)), data=data)

    def network_keys(self) -> dict:
        """What the weights' meaning depends on: a checkpoint's state fits another run only
        where these agree."""
        return {"model": self.model, "binarize": self.binarize, "data.num_classes": self.num_classes,
                "data.in_channels": self.in_channels, "data.input_size": self.input_size}


def _from_v1(spec: dict, config_file: Path | None) -> dict:
    """Version 1 (the module spec: model, binarize, optim, distill groups, data name and
    shape) -> 2. The rest of the config comes from the run folder's ``.hydra/config.yaml``
    when there is one, else from today's defaults (listed in ``unknown``)."""
    import yaml

    from .config import TrainConfig

    unknown = ["data.fingerprint"]
    config = asdict(TrainConfig())
    if config_file is not None and config_file.is_file():
        try:
            saved = yaml.safe_load(config_file.read_text()) or {}
        except (OSError, yaml.YAMLError):
            saved = None
        if isinstance(saved, dict):
            deep_update(config, saved)
        else:
            unknown.append("config")
    else:
        unknown.append("config")
    for group in ("model", "binarize", "optim", "distill"):
        if isinstance(spec.get(group), dict):
            deep_update(config[group], spec[group])
    if spec.get("data_name"):
        config["data"]["name"] = spec["data_name"]
    mean, std = _registry_normalisation(spec.get("data_name"))
    if mean is None:
        unknown.append("data.normalisation")
    data = {"name": spec.get("data_name"), "num_classes": spec["num_classes"], "in_channels": spec["in_channels"],
            "input_size": spec["input_size"], "mean": mean, "std": std, "root": None,
            "train_fingerprint": None, "test_fingerprint": None}
    return {"config": config, "data": data, "choices": {}, "started_from": None, "unknown": unknown,
            "tbnn_version": "0.1.0 (record version 1)", "record_version": 2}


def _registry_normalisation(name) -> tuple:
    """The normalisation a data module of this name uses today (what version 1 relied on)."""
    from .data import DATAMODULES

    if name in DATAMODULES:
        dm = DATAMODULES[name]
        return list(dm.mean), list(dm.std)
    return None, None


def _from_v2(d: dict, config_file: Path | None) -> dict:
    """Version 2 -> 3: ``binarize.swish_beta``, ``ede_t_min`` and ``ede_t_max`` became the
    surrogates' own parameters, ``binarize.surrogate_params`` (swish_sign.beta, ede.t_min/t_max)."""
    from .binarize.surrogates import default_parameters

    d = copy.deepcopy(d)
    b = d.get("config", {}).get("binarize")
    if isinstance(b, dict):
        params = b.setdefault("surrogate_params", default_parameters())
        for old, (name, key) in {"swish_beta": ("swish_sign", "beta"), "ede_t_min": ("ede", "t_min"),
                                 "ede_t_max": ("ede", "t_max")}.items():
            if old in b:
                params.setdefault(name, {})[key] = b.pop(old)
    d["record_version"] = 3
    return d


def _from_v3(d: dict, config_file: Path | None) -> dict:
    """Version 3 -> 4: ``binarize.pad_value`` (0 or 1) was added; every earlier run padded with 0."""
    d = copy.deepcopy(d)
    b = d.get("config", {}).get("binarize")
    if isinstance(b, dict):
        b.setdefault("pad_value", 0)
    d["record_version"] = 4
    return d


MIGRATIONS = {1: _from_v1, 2: _from_v2, 3: _from_v3}


def deep_update(base: dict, new: dict) -> dict:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_update(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


# ---- the data as read ----------------------------------------------------------------------

def _digest(ds, h) -> None:
    """Feed what determines a dataset's content into hash ``h``: the image and label arrays of an
    in-memory split, or an image folder's file names and labels (not the bytes of a million
    files), through Subset indices."""
    if ds is None:
        return
    if hasattr(ds, "dataset") and hasattr(ds, "indices"):  # torch Subset
        h.update(repr(list(map(int, ds.indices))).encode())
        _digest(ds.dataset, h)
    elif hasattr(ds, "x") and hasattr(ds, "y"):
        for t in (ds.x, ds.y):
            h.update(t.contiguous().numpy().tobytes() if hasattr(t, "numpy") else bytes(memoryview(t)))
    elif hasattr(ds, "samples"):
        root = Path(getattr(ds, "root", "."))
        for path, label in ds.samples:
            h.update(f"{Path(path).relative_to(root) if Path(path).is_relative_to(root) else path}:{label}\n".encode())
    else:
        h.update(repr(len(ds)).encode())


def fingerprint(*datasets) -> str:
    h = hashlib.sha256()
    for ds in datasets:
        _digest(ds, h)
    return h.hexdigest()[:16]


def data_record(dm, data_cfg: dict) -> dict:
    """What a set-up data module read: enough to tell whether another command reads the same."""
    test = getattr(dm, "test_set", None)
    val = getattr(dm, "val_set", None)
    train = getattr(dm, "train_set", None)
    carved = val is not None and val is not test
    return {
        "name": data_cfg["name"], "root": str(getattr(dm, "source", None) or data_cfg.get("root") or ""),
        "num_classes": dm.num_classes, "in_channels": dm.in_channels, "input_size": dm.input_size,
        "mean": list(dm.mean), "std": list(dm.std), "split_seed": data_cfg.get("split_seed"),
        "val_size": data_cfg.get("val_size"), "train_subset": data_cfg.get("train_subset"),
        "train_images": len(train) if train is not None else None,
        "val_images": (len(val) if carved else 0) if val is not None else None,
        "test_images": len(test) if test is not None else None,
        "validates_on": "train split" if carved else "test split",
        "train_fingerprint": fingerprint(train, val if carved else None) if train is not None else None,
        "test_fingerprint": fingerprint(test) if test is not None else None,
    }


# ---- comparing a command with the record ---------------------------------------------------

def get_path(d: dict, path: str):
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return _MISSING
        d = d[part]
    return d


_MISSING = object()


def set_path(d: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for part in parents:
        d = d.setdefault(part, {})
    d[last] = copy.deepcopy(value)


def leaf_diffs(recorded, asked, path: str) -> list[tuple[str, object, object]]:
    """(key, recorded, asked) for every leaf under ``path`` whose values differ."""
    if isinstance(recorded, dict) and isinstance(asked, dict):
        out = []
        for k in sorted(set(recorded) | set(asked)):
            out += leaf_diffs(recorded.get(k, _MISSING), asked.get(k, _MISSING), f"{path}.{k}" if path else k)
        return out
    return [] if _same(recorded, asked) else [(path, recorded, asked)]


def _same(a, b) -> bool:
    """Equal as config values: 0 == 0.0, but True is not 1 and a list equals a tuple."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def rule_of(key: str) -> str | None:
    """The RESUME_MAY_CHANGE rule covering ``key`` (itself or a group above it)."""
    parts = key.split(".")
    for i in range(len(parts), 0, -1):
        rule = RESUME_MAY_CHANGE.get(".".join(parts[:i]))
        if rule:
            return rule
    return None


def _show(v) -> str:
    return "(absent)" if v is _MISSING else repr(v)


def resume_config(record: RunRecord, asked: dict[str, object], run_dir) -> tuple[dict, list[str]]:
    """The config a resumed run continues with: the record's, with the asked changes that
    ``RESUME_MAY_CHANGE`` allows. Returns (config, keys whose data must be re-checked);
    raises ResumeError listing every asked change that is not allowed, with its recorded
    and its new value."""
    config = copy.deepcopy(record.config)
    refused, recheck = [], []
    for path, value in asked.items():
        if path.split(".")[0] in COMMAND_KEYS:
            continue
        recorded = get_path(record.config, path)
        if recorded is _MISSING and path in record.choices:  # a group option (method=, experiment=)
            recorded = record.choices[path]
        for key, old, new in leaf_diffs(recorded, value, path):
            rule = rule_of(key)
            ok = rule == "any" or rule == "same data" or (
                rule == "up" and isinstance(old, int) and isinstance(new, int) and old != -1 and new >= old)
            if not ok:
                refused.append(f"{key}: recorded {_show(old)}, asked {_show(new)}")
                continue
            if rule == "same data":
                recheck.append(key)
            set_path(config, key, new)
    if refused:
        allowed = ", ".join(f"{k} ({'upwards' if r == 'up' else 'same images' if r == 'same data' else 'any'})"
                            for k, r in RESUME_MAY_CHANGE.items())
        raise ResumeError(
            f"resume={run_dir} continues the recorded run; these overrides would change what it already "
            "computed:\n  " + "\n  ".join(refused) +
            f"\nA resumed run may change only: {allowed}.\nStart a new run for the others (ckpt_path=RUN/"
            "checkpoints/last.ckpt starts one from this run's state)")
    return config, recheck


def check_same_data(recorded: dict, now: dict, what: str) -> None:
    """Refuse data whose fingerprint differs from the recorded one (None: unknown, not checked)."""
    for key in ("train_fingerprint", "test_fingerprint"):
        a, b = recorded.get(key), now.get(key)
        if a and b and a != b:
            split = key.split("_")[0]
            raise ResumeError(
                f"{what}: the {split} images read from {now.get('root') or 'the data search path'} are not the ones "
                f"the run was trained on (fingerprint {b} vs recorded {a}, read from {recorded.get('root')}). "
                "Point data.root at the recorded data, or start a new run")


def data_summary(d: dict) -> str:
    return f"{d.get('name')} ({d.get('root') or 'search path'})"


def record_of_checkpoint(ckpt: dict, path: Path | None = None) -> RunRecord:
    """The record a checkpoint carries (migrated; a version-1 checkpoint inside a run folder takes
    the rest of its config from the folder's .hydra/config.yaml)."""
    config_file = None
    if path is not None:
        run = Path(path).resolve().parent.parent
        config_file = run / ".hydra" / "config.yaml"
    try:
        return RunRecord.from_dict(ckpt["hyper_parameters"], config_file)
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: its run record is incomplete ({e}); was it written by another tbnn "
                              "version?") from e


def compare_network(record: RunRecord, other: RunRecord) -> list[str]:
    """The keys in which two records describe different networks."""
    mine, theirs = record.network_keys(), other.network_keys()
    out = []
    for k in mine:
        out += [f"{key}: checkpoint {_show(a)}, config {_show(b)}" for key, a, b in leaf_diffs(theirs[k], mine[k], k)]
    return out


__all__ = ["RunRecord", "RECORD_VERSION", "RESUME_MAY_CHANGE", "data_record", "resume_config", "check_same_data",
           "record_of_checkpoint", "compare_network", "fingerprint"]
