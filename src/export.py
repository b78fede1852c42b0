"""Export a checkpoint as a bit-packed file (and optionally ONNX):
``python src/export.py ckpt_path=outputs/train/.../checkpoints/last.ckpt out=model.tbnn``."""
import hydra
from omegaconf import DictConfig

from tbnn.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    from tbnn.cli import run_guarded
    from tbnn.export.cli import export_checkpoint

    run_guarded(export_checkpoint, cfg)


if __name__ == "__main__":
    main()
