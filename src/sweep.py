"""Run a W&B sweep file without a W&B server.

    python src/sweep.py sweeps/ablation_scales.yaml --workers 2
    python src/sweep.py sweeps/paper_main.yaml --gpus 0,1,2,3
    python src/sweep.py sweeps/ablation_l2.yaml --dry-run
    python src/sweep.py sweeps/methods_cifar10.yaml --only model=vgg_small --only seed=0,1 -- trainer.max_epochs=4
    python src/sweep.py sweeps/ablation_scales.yaml --workers 2 -- data=fashion_mnist trainer.max_epochs=1
    python src/sweep.py sweeps/paper_main.yaml --slurm --slurm-opt partition=gpu -- trainer=gpu

Arguments after ``--`` are Hydra overrides appended to every run (e.g. a reduced budget);
they are part of each run's identity, so other overrides make other runs. Exit code 0 when
every run succeeded, 2 for a bad sweep file or option, 1 when runs failed, 128+N when
interrupted by signal N; running the same command again retries failed runs, resumes
interrupted ones from their checkpoints and skips finished ones.
"""
import argparse
import sys


def main(argv=None) -> int:
    from tbnn.cli import run_guarded
    from tbnn.sweep import run_sweep

    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", help="a sweep file (W&B format), e.g. sweeps/ablation_scales.yaml")
    ap.add_argument("--workers", type=int, default=1, help="runs at a time on the CPU (default 1)")
    ap.add_argument("--gpus", default=None, help="comma-separated GPU ids: one run per GPU at a time")
    ap.add_argument("--count", type=int, default=None, help="number of runs for random/bayes sweeps")
    ap.add_argument("--only", action="append", metavar="KEY=V1,V2",
                    help="run only this slice of the grid (repeatable), e.g. --only model=vgg_small --only seed=0,1")
    ap.add_argument("--out", default="sweeps_out", help="where runs are written (default sweeps_out/)")
    ap.add_argument("--logger", default="wandb", choices=["wandb", "csv", "tensorboard", "none"],
                    help="per-run logger; wandb runs offline unless WANDB_MODE/a key says otherwise")
    ap.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    ap.add_argument("--slurm", action="store_true", help="submit the runs as SLURM jobs (one array) instead of running "
                    "them here; each asks what its config needs (README, 'On a SLURM cluster')")
    ap.add_argument("--slurm-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="a launcher setting (conf/hydra/launcher/slurm.yaml), e.g. partition=gpu, timeout_min=600, "
                    "wait=false; repeatable")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error("--workers must be >= 1")
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else None
    if args.slurm_opt and not args.slurm:
        ap.error("--slurm-opt needs --slurm")
    if args.slurm and gpus:
        ap.error("--gpus is for runs here; with --slurm each run asks SLURM for its devices (-- trainer=gpu)")
    slurm = run_guarded(_slurm_options, args.slurm_opt) if args.slurm else None
    return run_guarded(run_sweep, args.sweep, workers=args.workers, gpus=gpus, dry_run=args.dry_run, out=args.out,
                       count=args.count, extra=extra, logger=args.logger, only=args.only, slurm=slurm)


def _slurm_options(items: list[str]) -> dict:
    import yaml

    from tbnn.errors import SweepError
    from tbnn.slurm import launcher_options

    bad = [i for i in items if "=" not in i]
    if bad:
        raise SweepError(f"--slurm-opt {bad[0]}: expected KEY=VALUE")
    return launcher_options({k: yaml.safe_load(v) for k, v in (i.split("=", 1) for i in items)})


if __name__ == "__main__":
    sys.exit(main())
