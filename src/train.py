"""Train a binary CNN: ``python src/train.py [group=option ...] [key=value ...]``.

Examples::

    python src/train.py                                   # the quick default job (Fashion-MNIST)
    python src/train.py experiment=paper_vgg_small_cifar10 trainer=gpu
    python src/train.py model=alexnet data=imagenet binarize.weight_scale_l2=5e-4
"""
import hydra
from omegaconf import DictConfig

from tbnn.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from tbnn.cli import run_guarded
    from tbnn.pipeline import train

    run_guarded(train, cfg)


if __name__ == "__main__":
    main()
