"""BinarizeConfig: every knob of trained binarization, one dataclass.

It is also the Hydra schema of the ``binarize`` config group, so field names are
the dotted override keys (``binarize.weight_scale_l2=5e-4``). The defaults are the
``paper`` preset. Choices the paper does not state are marked RECONSTRUCTED.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict

from .registry import check_choice
from .schema import check_fields, spec
from .surrogates import SURROGATES, check_parameters, default_parameters

WEIGHT_SCALES = ("none", "analytic", "trainable")
ACT_SCALES = ("none", "trainable")
OUTPUT_SCALES = ("none", "channel", "factorized")
ACT_THRESHOLDS = ("none", "channel")
GRANULARITIES = ("channel", "layer")
FP_ACTIVATIONS = ("relu", "hardtanh", "identity")
PAD_VALUES = (0, 1)


@dataclass
class BinarizeConfig:
    #: binarize latent weights with sign (False: full-precision weights, same code path).
    binarize_weights: bool = True
    #: binarize layer inputs with sign (False: ``fp_activation`` is applied instead).
    binarize_activations: bool = True
    #: none | analytic (XNOR-Net mean|W|, recomputed each step) | trainable (alpha, an nn.Parameter).
    weight_scale: str = spec("trainable", choices=WEIGHT_SCALES)
    #: none | trainable (beta, an nn.Parameter initialised to ``act_scale_init``).
    act_scale: str = spec("trainable", choices=ACT_SCALES)
    #: granularity of alpha: channel (one per output channel) | layer (one scalar). RECONSTRUCTED.
    scale_granularity: str = spec("channel", choices=GRANULARITIES)
    #: granularity of beta: layer (one scalar) | channel (one per input channel). RECONSTRUCTED.
    act_scale_granularity: str = spec("layer", choices=GRANULARITIES)
    #: initial beta. RECONSTRUCTED (1.0: the binary activations start at +-1).
    act_scale_init: float = spec(1.0, gt=0)
    #: trainable scales are projected onto [scale_min, inf) after each optimiser step. RECONSTRUCTED.
    scale_min: float = spec(1e-4, ge=0)
    #: surrogate derivative for weights (a SURROGATES name). ``tight`` is RECONSTRUCTED.
    weight_grad: str = spec("tight", choices=SURROGATES)
    #: surrogate derivative for activations (a SURROGATES name); ``long_tailed`` per the authors.
    act_grad: str = spec("long_tailed", choices=SURROGATES)
    #: each surrogate's own parameters, by surrogate and name (``binarize.surrogate_params.swish_sign.beta=10``;
    #: ede's t_min and t_max): the defaults of its function's keyword arguments, for every
    #: registered surrogate that has any (``surrogates.parameters``); a name it does not take is an error.
    surrogate_params: Dict[str, Dict[str, float]] = spec(factory=lambda: default_parameters())
    #: coefficient of sum(alpha^2) added to the loss. The value is RECONSTRUCTED (the paper's is unknown).
    weight_scale_l2: float = spec(1e-4, ge=0)
    #: clip latent weights to [-1, 1] after each optimiser step (BNN convention).
    clip_latent_weights: bool = True
    #: non-linearity applied to inputs in place of sign when binarize_activations is False.
    fp_activation: str = spec("relu", choices=FP_ACTIVATIONS)
    #: XNOR-Net++'s learned output scale Gamma: none | channel (one per output channel) |
    #: factorized (channel x height x width factors). Its init is RECONSTRUCTED (see layers).
    output_scale: str = spec("none", choices=OUTPUT_SCALES)
    #: ReActNet's RSign: none | channel (a learned threshold per input channel before the sign).
    act_threshold: str = spec("none", choices=ACT_THRESHOLDS)
    #: the value a binary conv's binarized input is padded with: 0 (zero padding, torch's: the
    #: border inputs are ternary) | 1 (+1: every input stays binary; larq's ``pad_values=1``, which
    #: Larq Compute Engine prefers). Only where activations are binarized (real-valued inputs are
    #: zero-padded); training, export and the packed engine all take it.
    pad_value: int = spec(0, choices=PAD_VALUES)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "BinarizeConfig":
        """Check every field against its rule (``tbnn.binarize.schema``) and each surrogate's
        parameters against its signature; ValueError names the key."""
        check_fields(BinarizeConfig, self, "binarize")
        self.grad_arguments()
        return self

    def grad_arguments(self) -> dict:
        """{"weight": ..., "act": ...}: the arguments each surrogate is called with (``surrogate_arguments``)."""
        return surrogate_arguments(self.weight_grad, self.act_grad, self.surrogate_params)

    @classmethod
    def from_dict(cls, d) -> "BinarizeConfig":
        """Build from a mapping (e.g. an OmegaConf node), rejecting unknown keys by name."""
        d = dict(d)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"unknown binarize keys {sorted(unknown)}; valid keys: {sorted(cls.__dataclass_fields__)}"
            )
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def surrogate_arguments(weight_grad: str, act_grad: str, surrogate_params) -> dict:
    """{"weight": ..., "act": ...}: the arguments of the weight and activation surrogates, their
    ``surrogate_params`` over their defaults. Every entry of ``surrogate_params`` is checked (a
    registered surrogate, parameters it takes, finite numbers): ValueError names the key."""
    params = dict(surrogate_params or {})
    for name in params:
        if name not in SURROGATES:
            raise ValueError(f"binarize.surrogate_params.{name}: no surrogate of that name; valid names: "
                             f"{', '.join(SURROGATES.names())}")
    args = {name: check_parameters(f"binarize.surrogate_params.{name}", name, params.get(name))
            for name in {*params, weight_grad, act_grad}}
    return {"weight": args[weight_grad], "act": args[act_grad]}


#: the presets of the ``binarize`` config group, as field overrides of the paper defaults.
PRESETS: dict[str, dict] = {
    "paper": {},
    # XNOR-Net: analytic per-channel mean|W|, no activation scale, clipped STE both ways.
    "xnor": dict(weight_scale="analytic", act_scale="none", weight_grad="clipped_ste",
                 act_grad="clipped_ste", weight_scale_l2=0.0),
    # BNN (Hubara et al.): no scales, clipped STE, latent weights clipped to [-1, 1].
    "bnn": dict(weight_scale="none", act_scale="none", weight_grad="clipped_ste",
                act_grad="clipped_ste", weight_scale_l2=0.0),
    # Bi-Real Net: magnitude-aware (analytic) weight scale, ApproxSign for activations.
    "bireal": dict(weight_scale="analytic", act_scale="none", weight_grad="clipped_ste",
                   act_grad="approx_sign", weight_scale_l2=0.0),
    # XNOR-Net++ (Bulat & Tzimiropoulos, BMVC 2019): no alpha, a learned output scale factorised
    # over (channel, height, width), their paper's best case; clipped STE both ways.
    "xnorpp": dict(weight_scale="none", act_scale="none", output_scale="factorized", weight_grad="clipped_ste",
                   act_grad="clipped_ste", weight_scale_l2=0.0),
    # ReActNet (Liu et al., ECCV 2020) on Bi-Real's binarization: analytic weight scale, RSign
    # thresholds, ApproxSign for activations (RPReLU is the model option model.activation=rprelu).
    "reactnet": dict(weight_scale="analytic", act_scale="none", act_threshold="channel", weight_grad="clipped_ste",
                     act_grad="approx_sign", weight_scale_l2=0.0),
    # Full precision: same layers, nothing binarized, ReLU in place of sign.
    "none": dict(binarize_weights=False, binarize_activations=False, weight_scale="none",
                 act_scale="none", weight_scale_l2=0.0, clip_latent_weights=False),
}


def preset(name: str, **overrides) -> BinarizeConfig:
    """The BinarizeConfig of a named preset, with ``overrides`` of its fields.

    Args:
        name: a key of ``PRESETS``: ``paper`` (the defaults: trainable alpha and beta, tight
            and long-tailed surrogates, L2 on alpha), ``xnor``, ``bnn``, ``bireal``, ``xnorpp``,
            ``reactnet``, ``none`` (full precision through the same layers).
        **overrides: field values over the preset's (``preset("paper", pad_value=1)``).

    Returns:
        a validated ``BinarizeConfig`` (a bad field or value raises ValueError naming it).

    References:
        paper: Xu & Cheung, BMVC 2019, arXiv:1909.11366. xnor: Rastegari et al., "XNOR-Net",
        ECCV 2016, arXiv:1603.05279. bnn: Hubara et al., "Binarized Neural Networks", NeurIPS
        2016, arXiv:1602.02830. bireal: Liu et al., "Bi-Real Net", ECCV 2018, arXiv:1808.00278.
        xnorpp: Bulat & Tzimiropoulos, "XNOR-Net++", BMVC 2019, arXiv:1909.13863. reactnet:
        Liu et al., "ReActNet", ECCV 2020, arXiv:2003.03488.
    """
    check_choice("binarize preset", name, PRESETS)
    return BinarizeConfig(**{**PRESETS[name], **overrides})
