"""Train a binary CNN: ``python src/train.py [group=option ...] [key=value ...]``.

Examples::

    python src/train.py                                   # the quick default job (Fashion-MNIST)
    python src/train.py experiment=paper_vgg_small_cifar10 trainer=gpu
    python src/train.py model=alexnet data=imagenet binarize.weight_scale_l2=5e-4
    python src/train.py resume=outputs/train/<time>            # continue a stopped run
"""
import sys

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
    from tbnn.cli import run_guarded
    from tbnn.resume import resume_argv

    sys.argv[1:] = run_guarded(resume_argv, sys.argv[1:])
    main()
