"""Ablation tables from finished runs: mean +- std over seeds, runs counted, missing and
failed runs shown as such, the paper's numbers beside ours where it reports them; written
as Markdown, CSV and a PNG plot per table."""
from __future__ import annotations

import csv
import io
import itertools
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_write, atomic_write_text
from .binarize import BinarizeConfig
from .errors import SweepError, TbnnError
from .layout import RECORD
from .paths import check_outputs
from .record import RunRecord
from .sweep import Run, expand, load_sweep, metric_key, parse_only, scan

#: published top-1 accuracies (%) by (method, full-width network): (value, dataset, source).
#: A method is a binarize preset or a conf/method option. Only numbers checked against their
#: source are listed; a cell on other data or on a network of another width gets none.
PUBLISHED = {
    ("paper", "vgg_small"): (92.3, "cifar10", "Xu & Cheung, BMVC 2019, VGG-Small"),
    ("paper", "alexnet"): (46.1, "imagenet", "Xu & Cheung, BMVC 2019, AlexNet"),
    ("paper", "resnet18"): (54.2, "imagenet", "Xu & Cheung, BMVC 2019, ResNet-18"),
}


@dataclass
class Cell:
    params: dict                  # the cell's swept values (seed excluded)
    expected: int                 # runs the sweep plans for it
    values: list[float]           # the metric of its finished runs
    test_values: list[float]
    failed: int
    records: list                 # the run records of the finished runs (None where a run has none)

    @staticmethod
    def fmt(xs: list[float]) -> str:
        if not xs:
            return "missing"
        mean = 100 * statistics.fmean(xs)
        return f"{mean:.2f} +- {100 * statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{mean:.2f}"

    def published(self, overrides: tuple = ()) -> str:
        """The published number of the cell's method on its network, with its source: only when
        every finished run's record says that method, that network at full width and that
        dataset, and no binarize or model key is changed (the method or the network is then
        another one)."""
        recs = self.records
        if not recs or any(r is None for r in recs):
            return ""
        seen = {(r.method, r.model["name"], float(r.model["width"]), r.data_name) for r in recs}
        if len(seen) != 1:
            return ""
        method, model, width, data = seen.pop()
        defaults = BinarizeConfig()
        changed = [k for k, v in self.params.items() if k.startswith("binarize.")
                   and getattr(defaults, k.split(".", 1)[1], None) != v]
        changed += [o for o in overrides if o.startswith(("model.", "binarize."))]
        found = PUBLISHED.get((method, model))
        if changed or found is None or width != 1.0 or data != found[1]:
            return ""
        return f"{found[0]:.1f} ({found[2]})"


def run_record(run: Run) -> RunRecord | None:
    """The record of a sweep run's folder (None if it has none: runs of tbnn before records)."""
    try:
        return RunRecord.from_dict(json.loads((run.dir / RECORD).read_text()))
    except (OSError, ValueError, TbnnError):
        return None


def cells_of(cfg: dict, runs: list[Run], keep: dict | None = None) -> tuple[list[str], list[Cell]]:
    """Group runs by their non-seed parameters that vary in the sweep (within the slice ``keep``,
    as from ``parse_only``)."""
    varying = [k for k, spec in cfg["parameters"].items() if k != "seed" and "values" in spec]
    metric = metric_key(cfg)
    groups: dict[tuple, list[Run]] = {}
    if cfg["method"] == "grid":  # every planned cell appears, in grid order, even with no run on disk
        for combo in itertools.product(*((keep or {}).get(k, cfg["parameters"][k]["values"]) for k in varying)):
            groups[combo] = []
    for r in runs:
        groups.setdefault(tuple(r.params.get(k) for k in varying), []).append(r)
    fixed = {k: spec["value"] for k, spec in cfg["parameters"].items() if "value" in spec}
    cells = []
    for combo, rs in groups.items():
        done = [r for r in rs if r.state == "finished"]
        cells.append(Cell({**fixed, **dict(zip(varying, combo))}, len(rs),
                          [r.metrics[metric] for r in done if r.metrics.get(metric) is not None],
                          [r.metrics["test_acc_top1"] for r in done if r.metrics.get("test_acc_top1") is not None],
                          sum(r.state == "failed" for r in rs), [run_record(r) for r in done]))
    return varying, cells


def select_variant(cfg: dict, sweep_dir: Path, overrides: list[str] | None) -> tuple[tuple, str]:
    """(overrides, device) of the runs to report. Runs made with other overrides after ``--``
    (e.g. a smoke test with a smaller budget) are never mixed in: without ``overrides``, the
    runs on disk must all share one variant, else the variants are listed."""
    variants: dict[tuple, int] = {}
    for r in scan(sweep_dir).values():
        if r.identity.program == cfg["program"]:
            v = (r.identity.overrides, r.identity.device)
            variants[v] = variants.get(v, 0) + 1
    if overrides is not None:
        matching = [v for v in variants if v[0] == tuple(overrides)]
        return matching[0] if len(matching) == 1 else (tuple(overrides), "cpu")
    if len(variants) > 1:
        listed = "\n  ".join(f"-- {' '.join(o) or '(none)'} on {d}: {n} runs" for (o, d), n in variants.items())
        raise SweepError(f"{sweep_dir} holds runs of this sweep made with different overrides:\n  {listed}\n"
                         "pass the overrides of the runs to report after --, as given to src/sweep.py")
    return next(iter(variants), ((), "cpu"))


def write_report(sweep_path: str | Path, runs_root: str | Path = "sweeps_out", out: str | Path | None = None,
                 count: int | None = None, overrides: list[str] | None = None,
                 only: list[str] | None = None) -> dict[str, Path]:
    """The tables of a sweep's runs (or of the slice ``only`` selects, as in ``run_sweep``)."""
    cfg = load_sweep(sweep_path)
    keep = parse_only(only, cfg)
    sweep_dir = Path(runs_root) / cfg["name"]
    out = Path(out or sweep_dir)
    check_outputs({"sweep": sweep_path}, {"--out": out}, folders=("--out",))
    variant, device = select_variant(cfg, sweep_dir, overrides)
    if cfg["method"] == "grid" or count:
        runs = expand(cfg, sweep_dir, count, list(variant), device)
    else:
        runs = [r for r in scan(sweep_dir).values() if (r.identity.overrides, r.identity.device) == (variant, device)]
    runs = [r for r in runs if all(r.params.get(k) in v for k, v in keep.items())]
    varying, cells = cells_of(cfg, runs, keep)
    out.mkdir(parents=True, exist_ok=True)
    metric = cfg["metric"]["name"]
    header = [*varying, f"{metric} (%)", "test/acc_top1 (%)", "runs finished / planned", "failed",
              "published (%)"]
    rows = [[*(c.params.get(k) for k in varying), Cell.fmt(c.values), Cell.fmt(c.test_values),
             f"{len(c.values)} / {c.expected}", c.failed or "", c.published(variant)] for c in cells]
    md = [f"# {cfg['name']}", "",
          f"Mean +- std over seeds of `{metric}` and test top-1, from `{sweep_dir}`"
          + (f", runs with `-- {' '.join(variant)}`" if variant else "") + (" on GPU" if device == "gpu" else "")
          + "".join(f", only `{item}`" for item in only or [])
          + ". 'missing': no finished run for that cell. 'published': the method's number on the same "
          "full-width network and dataset, where one is known (none for a changed network or method).", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    paths = {"markdown": out / f"{cfg['name']}.md", "csv": out / f"{cfg['name']}.csv",
             "plot": out / f"{cfg['name']}.png"}
    atomic_write_text(paths["markdown"], "\n".join(md) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*varying, "metric_mean", "metric_std", "test_mean", "test_std", "finished", "planned", "failed"])
    for c in cells:
        stats = [_mean_std(c.values), _mean_std(c.test_values)]
        w.writerow([*(c.params.get(k) for k in varying), *stats[0], *stats[1], len(c.values), c.expected, c.failed])
    atomic_write_text(paths["csv"], buf.getvalue())
    _plot(cells, varying, metric, cfg["name"], paths["plot"])
    return paths


def _mean_std(xs):
    if not xs:
        return ["", ""]
    return [statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0]


def _plot(cells: list[Cell], varying: list[str], metric: str, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["\n".join(f"{k.split('.')[-1]}={c.params.get(k)}" for k in varying) for c in cells]
    means = [100 * statistics.fmean(c.values) if c.values else math.nan for c in cells]
    stds = [100 * statistics.stdev(c.values) if len(c.values) > 1 else 0.0 for c in cells]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(cells)), 4.5))
    ax.bar(range(len(cells)), [0 if math.isnan(m) else m for m in means], yerr=stds, capsize=3,
           color=["#bbbbbb" if math.isnan(m) else "#4c72b0" for m in means])
    for i, (m, sd) in enumerate(zip(means, stds)):
        ax.text(i, 0 if math.isnan(m) else m + sd, "missing" if math.isnan(m) else f"{m:.1f}", ha="center",
                va="bottom", fontsize=8)
    finite = [m for m in means if not math.isnan(m)]
    if finite:
        ax.set_ylim(max(0, min(finite) - 10), min(100, max(finite) + 5))
    ax.set_xticks(range(len(cells)), labels, fontsize=7)
    ax.set_ylabel(f"{metric} (%), mean +- std over seeds")
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=120, format="png")
    plt.close(fig)
    atomic_write(path, buf.getvalue())
