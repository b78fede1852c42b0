"""Ablation tables of a sweep's finished runs (Markdown, CSV, PNG):

    python src/report.py sweeps/ablation_scales.yaml [--runs sweeps_out] [--out DIR] [--only KEY=V1,V2] [-- OVERRIDES]

Runs made with other overrides after ``--`` in src/sweep.py are other runs: pass the same
overrides here (needed only when the run folder holds runs of several). For a sweep run with
W&B agents instead, ``--wandb ENTITY/PROJECT/SWEEP_ID`` first pulls each run's config and
summary into the same layout (needs a W&B login)."""
import argparse
import json
import sys
from pathlib import Path


def pull_wandb(sweep_path: str, sweep_id: str, runs_root: str) -> int:
    import wandb

    from tbnn.atomic import atomic_write_text
    from tbnn.sweep import RUN_FILE, Identity, load_sweep

    cfg = load_sweep(sweep_path)
    keys = list(cfg["parameters"])
    n = 0
    for run in wandb.Api().sweep(sweep_id).runs:
        ident = Identity(cfg["program"], tuple(sorted((k, run.config.get(k)) for k in keys)), (), "wandb")
        d = Path(runs_root) / cfg["name"] / ident.key
        atomic_write_text(d / RUN_FILE, json.dumps({"identity": ident.as_dict(), "wandb_run": "/".join(run.path)}))
        if run.state == "finished":
            s = run.summary
            atomic_write_text(d / "metrics.json", json.dumps({
                "status": "finished", "val_acc_top1": s.get("val/acc_top1"), "test_acc_top1": s.get("test/acc_top1"),
                "wandb_run": "/".join(run.path)}))
        elif run.state in ("failed", "crashed"):
            atomic_write_text(d / "failed.json", json.dumps({"wandb_run": "/".join(run.path), "state": run.state}))
        n += 1
    return n


def report(args, overrides) -> int:
    from tbnn.report import write_report

    if args.wandb:
        print(f"pulled {pull_wandb(args.sweep, args.wandb, args.runs)} runs from W&B")
    paths = write_report(args.sweep, args.runs, args.out, args.count, overrides, args.only)
    print(Path(paths["markdown"]).read_text())
    for kind, p in paths.items():
        print(f"{kind}: {p}")
    return 0


def main(argv=None) -> int:
    from tbnn.cli import run_guarded

    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else None
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", help="the sweep file the runs came from")
    ap.add_argument("--runs", default="sweeps_out", help="where src/sweep.py wrote the runs")
    ap.add_argument("--out", default=None, help="where to write the tables (default: the sweep's run folder)")
    ap.add_argument("--count", type=int, default=None, help="planned runs of a random/bayes sweep")
    ap.add_argument("--only", action="append", metavar="KEY=V1,V2",
                    help="report only this slice of the grid (repeatable), as given to src/sweep.py --only")
    ap.add_argument("--wandb", default=None, metavar="ENTITY/PROJECT/SWEEP_ID", help="pull runs from W&B first")
    return run_guarded(report, ap.parse_args(argv), overrides)


if __name__ == "__main__":
    sys.exit(main())
