"""Ablation tables of a sweep's finished runs (Markdown, CSV, PNG):

    python src/report.py sweeps/ablation_scales.yaml [--runs sweeps_out] [--out DIR] [--only KEY=V1,V2] [-- OVERRIDES]

Runs made with other overrides after ``--`` in src/sweep.py are other runs: pass the same
overrides here (needed only when the run folder holds runs of several). For a sweep run with
W&B agents instead, ``--wandb ENTITY/PROJECT/SWEEP_ID`` first pulls each run's config and
summary into the same layout (needs a W&B login)."""
import argparse
import sys
from pathlib import Path


def report(args, overrides) -> int:
    from tbnn.report import write_report
    from tbnn.sweep import pull_wandb

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
