"""The "tools" method for the shared trainer, CLI and stages.

``surgseg train tools`` runs the stages of :func:`stages`: ``coarse`` (the
multi-frame heatmap network), then one refinement stage per entry of
``refine_variants`` (each starting from the coarse stage's best checkpoint,
with the coarse network frozen and the mask priors precomputed once per
frame), and with ``direct: true`` the direct mask-augmented ablation (a
coarse network trained on mask-augmented targets with the gated loss). A
single stage trains with ``--set stage=coarse|refine|direct``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch

from ...errors import ConfigError, DatasetError
from ...training.method import MethodSpec, register_method
from . import ACTIONS, LANDMARK_TYPES
from .heatmaps import decode_heatmaps, gated_loss, heatmap_loss, to_image
from .matching import LandmarkEvaluator
from .model import build_from_config

log = logging.getLogger(__name__)

DEFAULT_CONFIG: Dict[str, Any] = {
    "stage": "coarse",            # coarse | refine | direct
    # model
    "k": 2,                       # frames either side of the centre frame
    "input_width": 160,
    "input_height": 128,
    "encoder": "resnet18",
    "encoder_weights": "imagenet",
    "encoder_depth": 4,
    "decoder_channels": None,
    "refine_encoder": None,       # default: the coarse network's settings
    "refine_encoder_depth": None,
    "refine_decoder_channels": None,
    "use_prior": True,            # refinement sees the mask prior M^c
    "aux_weight": 0.5,            # lambda_aux; > 0 adds the auxiliary mask branch
    # targets and losses
    "sigma": 2.0,                 # Gaussian sigma in heatmap pixels
    "mask_alpha": 0.1,            # direct ablation: plateau on the tool mask
    "kpt_radius": None,           # direct ablation: keypoint region radius (default 3 sigma)
    "gate_weights": [1.0, 1.0, 10.0],  # direct ablation: background, tool mask, keypoint region
    "direct_mask": "auto",        # auto (instruments/ folder, else SAM2 from the true points) | folder | sam2
    "flip": True,
    # decoding and evaluation
    "threshold": 0.3,
    "nms_radius": 3,
    "max_tools": 1,               # at most this many tips and anchors per frame (active tools)
    "match_tolerance": 15.0,      # px at the original resolution
    "actions": list(ACTIONS),
    "compare_checkpoints": [],    # evaluate: more checkpoints (rows) side by side
    # mask prior
    "prior_sam2_config": "surgseg_tiny",
    "prior_sam2_weights": None,   # None: random-init SAM2 (warned)
    "prior_cache": None,          # folder for precomputed priors (default: user cache)
    "prior_feature_cache": None,  # folder for SAM2 encoder features (None: not cached)
    # data
    "train_root": None,
    "val_root": None,
    "video_cache_mb": 64,
    # staged recipe (surgseg train tools)
    "refine_variants": ["prior_aux"],  # any of none, prior, prior_aux
    "direct": False,
    # schedule
    "lr": 1e-3,
    "batch_size": 8,
    "epochs": 20,
    "scheduler": "cosine",
}

VARIANTS = {"none": (False, 0.0), "prior": (True, 0.0), "prior_aux": (True, None)}
ROW_NAMES = {"coarse": "coarse", "direct": "direct mask-aug.", ("refine", False, False): "refine w/o prior",
             ("refine", True, False): "refine + prior", ("refine", True, True): "refine + prior + aux",
             ("refine", False, True): "refine + aux"}
ARCH_KEYS = ("k", "input_width", "input_height", "encoder", "encoder_depth", "decoder_channels")


def row_name(config: Mapping[str, Any]) -> str:
    stage = str(config.get("stage", "coarse"))
    if stage != "refine":
        return ROW_NAMES[stage]
    return ROW_NAMES[("refine", bool(config.get("use_prior", True)), float(config.get("aux_weight", 0)) > 0)]


def needs_prior(config: Mapping[str, Any]) -> bool:
    return str(config.get("stage")) == "refine" and (
        bool(config.get("use_prior", True)) or float(config.get("aux_weight", 0)) > 0)


def _root(config: Mapping[str, Any]):
    root = config.get("train_root") or config.get("data_root")
    if not root:
        raise ConfigError("tools: set train_root (a folder with tool_annotations.csv/.json files), "
                          "e.g. --set train_root=data/tools/train")
    return root


def load_coarse(config: Mapping[str, Any]):
    """The frozen coarse network of a refinement stage, from ``init_weights``."""
    from ...training.checkpoint import load_checkpoint
    from .model import CoarseNet, _arch

    path = config.get("init_weights")
    if not path:
        raise ConfigError("tools refinement stage: set init_weights to the coarse stage's checkpoint "
                          "(surgseg train tools runs the stages for you)")
    ckpt = load_checkpoint(path)
    state = {k[len("coarse."):]: v for k, v in ckpt["model"].items() if k.startswith("coarse.")}
    coarse = CoarseNet(int(config.get("k", 2)), **{**_arch(config, ""), "encoder_weights": None})
    try:
        coarse.load_state_dict(state)
    except RuntimeError as exc:
        from ...errors import WeightsError

        raise WeightsError(f"{path} is not a tools coarse checkpoint of this architecture: {exc}") from None
    return coarse.eval()


def prior_source(config: Mapping[str, Any], samples_sets, coarse=None, provider=None):
    """Precompute the priors of all ``samples_sets`` and return sample -> prior."""
    from .data import precompute_priors, prior_key
    from .prior import PriorCache, build_sam2_prior, default_prior_cache_dir

    coarse = coarse if coarse is not None else load_coarse(config)
    provider = provider if provider is not None else build_sam2_prior(config)
    cache = PriorCache(config.get("prior_cache") or default_prior_cache_dir(), prior_key(coarse, provider, config))
    for samples in samples_sets:
        n = precompute_priors(samples, coarse, provider, cache, config)
        if n:
            log.info("computed %d mask priors into %s", n, cache.folder)

    def get(sample):
        prior = cache.get(sample.video, sample.frame)
        if prior is None:
            raise DatasetError(f"mask prior of frame {sample.frame} of {sample.video} missing from {cache.folder}")
        return prior

    return get


def direct_mask_source(config: Mapping[str, Any]):
    """sample -> active tool mask for the direct ablation."""
    from .data import tool_mask_from_folder

    how = str(config.get("direct_mask", "auto"))
    if how not in ("auto", "folder", "sam2"):
        raise ConfigError(f"direct_mask must be auto, folder or sam2, got {how!r}")
    state: Dict[str, Any] = {}

    def get(sample):
        if how != "sam2":
            m = tool_mask_from_folder(sample)
            if m is not None:
                return m
            if how == "folder":
                raise DatasetError(f"no instruments/{sample.frame:06d}.png next to the annotations of {sample.video}")
        # oracle prompts: the TRUE tip and anchor (the ablation uses true tool structure)
        from ...io import open_video
        from .data import points_of
        from .prior import build_sam2_prior

        if "provider" not in state:
            state["provider"] = build_sam2_prior(config)
        with open_video(sample.video, cache_mb=0) as src:
            frame = src[sample.frame]
        pts = np.concatenate([points_of(sample, t) for t in LANDMARK_TYPES], 0)
        return (state["provider"](frame, pts) >= 0.5).astype(np.float32)

    return get


def build_datasets(config: Mapping[str, Any]):
    from .data import ToolFrameDataset, find_samples

    actions = tuple(config.get("actions") or ACTIONS)
    stage = str(config.get("stage", "coarse"))
    train_s = find_samples(_root(config), actions)
    val_s = find_samples(config["val_root"], actions) if config.get("val_root") else None
    priors = prior_source(config, [s for s in (train_s, val_s) if s]) if needs_prior(config) else None
    masks = direct_mask_source(config) if stage == "direct" else None
    mk = lambda s, train: ToolFrameDataset(s, config, train=train, mode=stage, priors=priors,  # noqa: E731
                                           direct_masks=masks)
    return mk(train_s, True), (mk(val_s, False) if val_s else None)


def forward(model, batch):
    return model(batch["clip"], batch.get("prior"))


def loss(outputs, batch, config) -> torch.Tensor:
    stage = str(config.get("stage", "coarse"))
    if stage == "direct":
        return gated_loss(outputs["coarse"], batch["target"], batch["regions"],
                          tuple(float(v) for v in config.get("gate_weights", (1.0, 1.0, 10.0))))
    if stage == "coarse":
        return heatmap_loss(outputs["coarse"], batch["target"])
    total = heatmap_loss(outputs["refined"], batch["target"])
    if outputs.get("aux") is not None:
        total = total + float(config.get("aux_weight", 0.0)) * heatmap_loss(outputs["aux"], batch["prior"])
    return total


def decode_batch(heat: torch.Tensor, image_sizes: torch.Tensor, config: Mapping[str, Any]) -> List[Dict[str, np.ndarray]]:
    """(B, C, h, w) heatmaps -> per item {type: (N, 3) x, y, score in image pixels}."""
    from .data import _max_peaks

    out = []
    heat = heat.detach().float().cpu().numpy()
    for b in range(heat.shape[0]):
        peaks = decode_heatmaps(heat[b], LANDMARK_TYPES, float(config.get("threshold", 0.3)),
                                int(config.get("nms_radius", 3)), _max_peaks(config))
        size = tuple(float(v) for v in image_sizes[b].tolist())
        hm = (heat.shape[-1], heat.shape[-2])
        out.append({t: np.column_stack([to_image(p[:, :2], size, hm), p[:, 2]]) if len(p) else np.zeros((0, 3))
                    for t, p in peaks.items()})
    return out


@torch.no_grad()
def metrics(outputs, batch, config) -> Dict[str, float]:
    """Tip/anchor F1 at ``match_tolerance`` px over the batch (for checkpoint
    selection; ``evaluate`` gives the paper's tables)."""
    heat = outputs["refined"] if outputs.get("refined") is not None else outputs["coarse"]
    decoded = decode_batch(heat, batch["image_size"], config)
    ev = LandmarkEvaluator(tol=float(config.get("match_tolerance", 15.0)))
    pts = batch["points"].cpu().numpy()
    for b, dec in enumerate(decoded):
        for c, kind in enumerate(LANDMARK_TYPES):
            truth = pts[b, c][~np.isnan(pts[b, c, :, 0])]
            ev.add_frame(kind, dec[kind][:, :2], truth, ["overall"] * len(truth), frame_action="overall")
    res = ev.results()
    out = {}
    for kind in LANDMARK_TYPES:
        f1 = res.get(kind, {}).get("overall", {}).get("f1", float("nan"))
        out[f"{kind}_f1"] = 1.0 if f1 != f1 else float(f1)  # nothing to find and nothing found: perfect
    out["f1"] = float(np.mean([out[f"{k}_f1"] for k in LANDMARK_TYPES]))
    return out


def stages(config: Mapping[str, Any], run_dir) -> Optional[list]:
    """The recipe of ``surgseg train tools`` (None: a single stage was asked for)."""
    from ...training.stages import Stage

    if config.get("stage"):
        return None
    run_dir = Path(run_dir)
    variants = list(config.get("refine_variants", DEFAULT_CONFIG["refine_variants"]) or [])
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ConfigError(f"refine_variants: unknown {bad}; choose from {', '.join(VARIANTS)}")
    base = dict(config)
    out = [Stage("coarse", {**base, "stage": "coarse"})]
    coarse_best = run_dir / "coarse" / "checkpoints" / "best.pt"
    for v in variants:
        use_prior, aux = VARIANTS[v]
        aux = float(config.get("aux_weight", DEFAULT_CONFIG["aux_weight"])) if aux is None else aux
        if v == "prior_aux" and aux <= 0:
            raise ConfigError("refine variant prior_aux needs aux_weight > 0")
        out.append(Stage(f"refine_{v}", {**base, "stage": "refine", "use_prior": use_prior, "aux_weight": aux,
                                          "init_weights": str(coarse_best), "init_missing_ok": ["refine"]},
                         carry=ARCH_KEYS, init_from_previous=False))
    if config.get("direct"):
        out.append(Stage("direct", {**base, "stage": "direct"}, init_from_previous=False))
    return out


def _predict(model, inputs, out_dir, config, progress=None, cancel=None):
    from .predict import predict_inputs

    return predict_inputs(model, inputs, out_dir, config, progress=progress, cancel=cancel)


def _evaluate(model, data, config, progress=None, cancel=None):
    from .evaluate import evaluate_method

    return evaluate_method(model, data, config, progress=progress, cancel=cancel)


SPEC = register_method(MethodSpec(
    name="tools",
    build_model=build_from_config,
    build_datasets=build_datasets,
    loss=loss,
    metrics=metrics,
    forward=forward,
    default_config=DEFAULT_CONFIG,
    monitor="val_f1",
    monitor_mode="max",
    predict=_predict,
    evaluate=_evaluate,
    stages=stages,
    result_kind="points",
    class_names={i + 1: name for i, name in enumerate(LANDMARK_TYPES)},  # heatmap channel + 1
    class_colours={1: (255, 80, 40), 2: (40, 200, 255)},  # tip orange-red, anchor cyan
    description="Tool tip/anchor landmarks: multi-frame coarse heatmaps refined with a SAM2 mask prior "
                "(coarse, refinement and direct mask-augmented stages), 15 px matching evaluation",
))
