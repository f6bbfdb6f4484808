"""Build SAM 2 models from their configs, official or surgseg's own.

Every model goes through one path, the one ``sam2.build_sam`` uses: read the
yaml, apply the overrides SAM2's video predictor applies, resolve, and
``hydra.utils.instantiate`` the ``model`` node. We read the yaml ourselves
(instead of ``hydra.compose``) because compose only sees configs inside the
``sam2`` package and switching Hydra's global search path would disturb any
other user of Hydra in the process; the configs have no defaults lists, so
the result is the same.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..errors import ConfigError, WeightsError

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
TINY_CONFIG = "surgseg_tiny"

# The predictor-level settings ``build_sam2_video_predictor`` adds on top of
# the yaml (postprocessing on): our engine uses the same model settings so its
# masks equal SAM2VideoPredictor's.
VIDEO_OVERRIDES: Tuple[str, ...] = (
    "model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor",
    "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
    "model.binarize_mask_from_pts_for_mem_enc=true",
    "model.fill_hole_area=8",
)


def config_path(config: str) -> Path:
    """Find a config by name: ``surgseg_tiny``, ``sam2.1_hiera_t``,
    ``configs/sam2.1/sam2.1_hiera_t.yaml``, or a path to a yaml file."""
    import sam2

    candidate = Path(config)
    if candidate.suffix == ".yaml" and candidate.is_file():
        return candidate
    stem = candidate.name[: -len(".yaml")] if candidate.name.endswith(".yaml") else candidate.name
    ours = CONFIG_DIR / f"{stem}.yaml"
    if ours.is_file():
        return ours
    pkg = Path(sam2.__file__).resolve().parent
    for sub in ("configs/sam2.1", "configs/sam2", "configs/sam2.1_training", ""):
        found = pkg / sub / f"{stem}.yaml"
        if found.is_file():
            return found
    raise ConfigError(f"unknown SAM2 config {config!r}: available: {', '.join(available_configs())}")


def available_configs() -> List[str]:
    import sam2

    pkg = Path(sam2.__file__).resolve().parent
    names = [p.stem for p in sorted(CONFIG_DIR.glob("*.yaml"))]
    names += [p.stem for sub in ("configs/sam2.1", "configs/sam2") for p in sorted((pkg / sub).glob("*.yaml"))]
    return names


def config_name(config: str) -> str:
    return config_path(config).stem


def compose_config(config: str, overrides: Iterable[str] = (), *, image_size: Optional[int] = None):
    """The resolved OmegaConf config of ``config`` with SAM2's video overrides."""
    from omegaconf import OmegaConf

    path = config_path(config)
    cfg = OmegaConf.load(path)
    dotlist = list(VIDEO_OVERRIDES) + [o.lstrip("+") for o in overrides]
    if image_size is not None:
        if image_size % 32 != 0 or image_size < 64:
            raise ConfigError(f"processing image size must be a multiple of 32 and >= 64, got {image_size}")
        side = image_size // 16  # RoPE feature map of the stride-16 level
        dotlist += [
            f"model.image_size={image_size}",
            f"model.memory_attention.layer.self_attention.feat_sizes=[{side},{side}]",
            f"model.memory_attention.layer.cross_attention.feat_sizes=[{side},{side}]",
        ]
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotlist))
        OmegaConf.resolve(cfg)
    except Exception as exc:  # omegaconf raises many types
        raise ConfigError(f"cannot apply overrides {dotlist} to SAM2 config {path}: {exc}") from exc
    return cfg


def instantiate_model(cfg, device: Union[str, torch.device] = "cpu"):
    from hydra.utils import instantiate

    with torch.device(device):
        return instantiate(cfg.model, _recursive_=True)


def read_sam2_state(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """SAM2's state dict from a file: official or exported weights, or a
    ``surgseg train sam2`` checkpoint (SAM2's keys under ``"sam."``)."""
    from ..weights.state_dict import read_checkpoint, state_dict_of

    ckpt = read_checkpoint(path, expected="a SAM2 checkpoint (.pt or .safetensors)")
    if ckpt.get("method") == "sam2" and isinstance(ckpt.get("model"), dict):
        if ckpt.get("trainable_only"):
            raise WeightsError(
                f"checkpoint {path} holds only the parameters trained on top of "
                f"{(ckpt.get('base_model') or {}).get('name')!r}; train with "
                "--set checkpoint_trainable_only=false to get weights that load on their own"
            )
        ckpt = {k[len("sam."):]: v for k, v in ckpt["model"].items() if k.startswith("sam.")}
    return state_dict_of(ckpt, path)


def build_model(
    config: str = "sam2.1_hiera_tiny",
    checkpoint: Optional[Union[str, Path]] = None,
    *,
    variant: Optional[str] = None,
    variant_options: Optional[Mapping[str, Any]] = None,
    missing_ok: Optional[Sequence[str]] = None,
    device: Optional[Union[str, torch.device]] = None,
    image_size: Optional[int] = None,
    overrides: Sequence[str] = (),
    seed: Optional[int] = None,
):
    """Build a SAM2 model (a ``SAM2VideoPredictor``, i.e. a ``SAM2Base`` with
    the video settings) in eval mode.

    ``config`` is a config name/path or an official checkpoint name
    (``sam2.1_hiera_tiny``: its config). ``checkpoint``: a path or registered
    weights name; None gives a randomly initialised model (say so in results).
    ``image_size`` overrides the processing resolution (multiple of 32).
    ``variant``: a registered model variant (``variants.register_variant``)
    applied after instantiation, with ``variant_options``.
    ``missing_ok``: parameter names (globs / module prefixes) the checkpoint
    may lack; default: the variant's new modules when the checkpoint is not
    registered as weights of that variant, else none. The parameters left
    at their initialisation are in ``model.surgseg_load_report.new_keys``
    (and the provenance); any other mismatch raises WeightsError.
    """
    from ..device import resolve_device
    from ..weights import OFFICIAL, list_weights, resolve_weights
    from ..weights.state_dict import LoadReport, load_state_into

    if config in OFFICIAL:
        config = OFFICIAL[config].config
    cfg = compose_config(config, overrides, image_size=image_size)
    if seed is not None:
        torch.manual_seed(seed)
    model = instantiate_model(cfg, device="cpu")
    variant_ref = None
    if variant is not None:
        from .variants import apply_variant, get_variant, variant_reference

        spec = get_variant(variant)
        model = apply_variant(model, variant, variant_options)
        variant_ref = variant_reference(spec.name)
    entry = None
    report = None
    if checkpoint is not None:
        path = resolve_weights(checkpoint)
        entry = next((e for e in list_weights() if e.present and e.file.resolve() == path.resolve()), None)
        if missing_ok is None:
            own_variant = entry is not None and entry.variant is not None and variant is not None and (
                entry.variant in (variant, variant_ref))
            missing_ok = spec.new_keys if variant is not None and not own_variant else ()
        target = f"SAM2 config {config_name(config)!r}" + (f" with variant {variant!r}" if variant else "")
        report = load_state_into(model, read_sam2_state(path), missing_ok=missing_ok, target=target, source=path)
        if report.new_keys:
            log.warning("%s into %s", report, target)
        else:
            log.info("loaded SAM2 weights %s into %s", path, target)
    model = model.to(resolve_device(device))
    model.eval()
    # provenance, read by provenance.model_identity
    model.surgseg_config_name = config_name(config)
    model.surgseg_variant = variant_ref
    model.surgseg_checkpoint = None
    model.surgseg_checkpoint_sha256 = None
    model.surgseg_load_report = report or LoadReport(source="random init")
    model.surgseg_model_name = f"random-init {config_name(config)}" + (f" ({variant})" if variant else "")
    if checkpoint is not None:
        model.surgseg_checkpoint = str(path)
        model.surgseg_model_name = path.stem
        if entry is not None:
            model.surgseg_model_name = entry.name
            model.surgseg_checkpoint_sha256 = entry.sha256
    return model
