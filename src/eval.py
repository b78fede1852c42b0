"""Evaluate a checkpoint on a data module's test split, writing metrics.json:
``python src/eval.py ckpt_path=outputs/train/.../checkpoints/last.ckpt [data=...]``."""
import hydra
from omegaconf import DictConfig

from tbnn.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from tbnn.cli import run_guarded
    from tbnn.pipeline import evaluate

    overridden = {o.split("=")[0].lstrip("+~").split(".")[0] for o in HydraConfig.get().overrides.task}
    run_guarded(evaluate, cfg, overridden)


if __name__ == "__main__":
    main()
