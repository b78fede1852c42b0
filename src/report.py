"""Ablation tables of a sweep's finished runs (Markdown, CSV, PNG):

    python src/report.py sweeps/ablation_scales.yaml [--runs sweeps_out] [--out DIR]

For a sweep run with W&B agents instead, ``--wandb ENTITY/PROJECT/SWEEP_ID`` first pulls
each run's config and summary into the same layout (needs a W&B login)."""
import argparse
import json
import sys
from pathlib import Path


def pull_wandb(sweep_path: str, sweep_id: str, runs_root: str) -> int:
    import wandb

    from tbnn.sweep import load_sweep, run_key

    cfg = load_sweep(sweep_path)
    keys = list(cfg["parameters"])
    n = 0
    for run in wandb.Api().sweep(sweep_id).runs:
        params = {k: run.config.get(k) for k in keys}
        d = Path(runs_root) / cfg["name"] / run_key(params)
        d.mkdir(parents=True, exist_ok=True)
        (d / "params.json").write_text(json.dumps(params))
        if run.state == "finished":
            s = run.summary
            (d / "metrics.json").write_text(json.dumps({
                "status": "finished", "val_acc_top1": s.get("val/acc_top1"), "test_acc_top1": s.get("test/acc_top1"),
                "wandb_run": run.path}))
        elif run.state in ("failed", "crashed"):
            (d / "failed.json").write_text(json.dumps({"wandb_run": "/".join(run.path), "state": run.state}))
        n += 1
    return n


def main(argv=None) -> int:
    from tbnn.report import write_report
    from tbnn.sweep import SweepError

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", help="the sweep file the runs came from")
    ap.add_argument("--runs", default="sweeps_out", help="where src/sweep.py wrote the runs")
    ap.add_argument("--out", default=None, help="where to write the tables (default: the sweep's run folder)")
    ap.add_argument("--count", type=int, default=None, help="planned runs of a random/bayes sweep")
    ap.add_argument("--wandb", default=None, metavar="ENTITY/PROJECT/SWEEP_ID", help="pull runs from W&B first")
    args = ap.parse_args(argv)
    try:
        if args.wandb:
            print(f"pulled {pull_wandb(args.sweep, args.wandb, args.runs)} runs from W&B")
        paths = write_report(args.sweep, args.runs, args.out, args.count)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(Path(paths["markdown"]).read_text())
    for kind, p in paths.items():
        print(f"{kind}: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
