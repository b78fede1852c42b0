"""Evaluate a checkpoint on the test split of its recorded data (or of another dataset named
with ``data=``), writing metrics.json:
``python src/eval.py ckpt_path=outputs/train/.../checkpoints/last.ckpt [data=... data.root=...]``."""
import hydra
from omegaconf import DictConfig

from tbnn.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from tbnn.cli import run_guarded
    from tbnn.pipeline import evaluate

    run_guarded(evaluate, cfg)


if __name__ == "__main__":
    main()
