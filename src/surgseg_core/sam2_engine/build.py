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

import functools
import logging
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

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


@functools.lru_cache(maxsize=4)
def model_state_keys(config: str) -> Dict[str, Tuple[int, ...]]:
    """Parameter names and shapes of an architecture (SAM2's Hiera cannot be
    built on the meta device, so this builds it once on the CPU)."""
    from ..weights.official import OFFICIAL

    if config in OFFICIAL:
        config = OFFICIAL[config].config
    model = instantiate_model(compose_config(config), device="cpu")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_state_dict_file(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """Read a checkpoint safely: safetensors or ``torch.load(weights_only=True)``.
    SAM2 checkpoints keep the weights under the ``"model"`` key."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            "(is it a complete .pt/.safetensors file? re-download or re-import it)"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        if state.get("method") == "sam2":  # a `surgseg train sam2` checkpoint: SAM2's keys under "sam."
            if state.get("trainable_only"):
                raise WeightsError(
                    f"checkpoint {path} holds only the parameters trained on top of "
                    f"{(state.get('base_model') or {}).get('name')!r}; train with "
                    "--set checkpoint_trainable_only=false to get weights that load on their own"
                )
            state = {k[len("sam."):]: v for k, v in state["model"].items() if k.startswith("sam.")}
        else:
            state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"checkpoint {path} holds no state dict of tensors (expected a dict or a dict under 'model')")
    return state


def check_state_keys(
    state: Dict[str, torch.Tensor], expected: Dict[str, Tuple[int, ...]], *, config: str, source: str
) -> None:
    """Raise WeightsError naming the config and the first mismatched keys."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {expected[k]}"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:3])})")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} with wrong shape (first: {'; '.join(wrong_shape[:3])})")
        raise WeightsError(
            f"checkpoint {source} does not match SAM2 config {config_name(config)!r}: " + "; ".join(parts)
        )


def build_model(
    config: str = "sam2.1_hiera_tiny",
    checkpoint: Optional[Union[str, Path]] = None,
    *,
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
    """
    from ..weights.official import OFFICIAL
    from .device import pick_device

    if config in OFFICIAL:
        config = OFFICIAL[config].config
    cfg = compose_config(config, overrides, image_size=image_size)
    if seed is not None:
        torch.manual_seed(seed)
    model = instantiate_model(cfg, device="cpu")
    if checkpoint is not None:
        from ..weights import resolve_weights

        path = resolve_weights(checkpoint)
        state = load_state_dict_file(path)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        check_state_keys(state, expected, config=config, source=str(path))
        model.load_state_dict(state)
        log.info("loaded SAM2 weights %s into %s", path, config_name(config))
    model = model.to(pick_device(device))
    model.eval()
    # provenance, read by provenance.model_identity
    model.surgseg_config_name = config_name(config)
    model.surgseg_checkpoint = None
    model.surgseg_checkpoint_sha256 = None
    model.surgseg_model_name = f"random-init {config_name(config)}"
    if checkpoint is not None:
        from ..weights import list_weights

        model.surgseg_checkpoint = str(path)
        model.surgseg_model_name = path.stem
        for entry in list_weights():
            if entry.present and entry.file.resolve() == path.resolve():
                model.surgseg_model_name = entry.name
                model.surgseg_checkpoint_sha256 = entry.sha256
                break
    return model
