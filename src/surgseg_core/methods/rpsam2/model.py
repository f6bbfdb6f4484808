"""RP-SAM2: a frozen SAM2 (any size, any registered variant) with the shift
block in front of its prompt encoder:

    S(I, P) = D(E(I), xi(F(P, i, p)))      i = E(I) (no-memory embedding), p = xi(P)

Only ``shift`` trains. The base SAM2 is identified by the sha256 of its
weights (``training.feature_cache.module_hash``: works for random-init
models as well as loaded checkpoints), plus its name, config, variant and
processing size; trained weights record it (``surgseg_base``) and the
trainer's checkpoint loader refuses them on another base.

Which clicks move (``shift_points``):
  ``"first"`` (default): the first positive click of each object on a frame;
      later clicks are corrections the user placed on purpose and negative
      clicks mark background, and the paper trains on single positive
      clicks only, so those stay where they are;
  ``"positive"``: every positive click, each on its own;
  ``"all"``: positive and negative clicks (negatives were never trained:
      the block would pull them into the object);
  ``"none"``: plain SAM2.
Box corners (labels 2/3) never move.

Inference goes through the platform: ``prompt_hook`` plugs into
``StreamingSAM2(prompt_hook=...)`` / ``ClickSession(prompt_hook=...)``, so
clicks in a video, tracking and the click session all use refined points.
"""
from __future__ import annotations

import weakref
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from ...device import low_precision_dtype, parameter_state
from ...errors import ConfigError
from ...sam2_engine.heads import FrameFeatures, HeadOutput, decode_masks, no_memory_embedding
from .block import BlockKeys, ShiftBlock, apply_offset, count_parameters

SHIFT_MODES = ("first", "positive", "all", "none")


def base_identity(sam) -> Dict[str, Any]:
    """What a trained block is tied to: the base SAM2's weights hash and names."""
    from ...training.feature_cache import module_hash

    return {
        "name": getattr(sam, "surgseg_model_name", None),
        "sha256": module_hash(sam),  # the weights themselves (file hash alone misses random-init bases)
        "config": getattr(sam, "surgseg_config_name", None),
        "variant": getattr(sam, "surgseg_variant", None),
        "checkpoint_sha256": getattr(sam, "surgseg_checkpoint_sha256", None),
        "image_size": int(sam.image_size),
    }


def shift_selection(labels: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, P) bool: the clicks that move under ``mode`` (see module doc)."""
    if mode not in SHIFT_MODES:
        raise ConfigError(f"rpsam2: shift_points must be one of {', '.join(SHIFT_MODES)}, got {mode!r}")
    pos = labels == 1
    if mode == "none":
        return torch.zeros_like(pos)
    if mode == "positive":
        return pos
    if mode == "all":
        return pos | (labels == 0)
    return pos & (torch.cumsum(pos.to(torch.int32), dim=1) == 1)


class RPSAM2(nn.Module):
    """``sam`` (frozen) + ``shift`` (:class:`~.block.ShiftBlock`).

    ``forward(batch)`` is the training forward (``train.training_forward``);
    ``segment`` and ``prompt_hook`` are for inference."""

    def __init__(
        self,
        sam,
        *,
        num_layers: int = 6,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        scale_init: float = 0.1,
        image_pos_init: str = "sam",
        shift_points: str = "first",
        train_options: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__()
        if image_pos_init not in ("sam", "random"):
            raise ConfigError(f"rpsam2: image_pos_init must be 'sam' or 'random', got {image_pos_init!r}")
        shift_selection(torch.zeros(1, 1), shift_points)  # validates the mode
        self.surgseg_base = base_identity(sam)  # before anything is attached to it
        self.sam = sam
        for p in self.sam.parameters():
            p.requires_grad_(False)
        self.sam.eval()
        dim = int(sam.sam_prompt_embed_dim)
        hw = int(sam.sam_image_embedding_size)
        dense_pe = None
        if image_pos_init == "sam":
            with torch.no_grad():
                dense_pe = sam.sam_prompt_encoder.get_dense_pe().detach().float().cpu()
        self.shift = ShiftBlock(dim, hw, num_layers=num_layers, num_heads=num_heads, mlp_dim=mlp_dim,
                                scale_init=scale_init, dense_pe=dense_pe)
        self.shift.to(next(sam.parameters()).device)
        self.shift_points = shift_points
        self.train_options: Dict[str, Any] = dict(train_options or {})
        self._feature_cache = None
        self._candidates: Dict[Tuple, Any] = {}  # (item key, object) -> candidate points (frozen SAM2: fixed)
        self._keys_cache: Dict[int, Tuple] = {}  # id(frame features) -> (weakref, block version, keys)

    # ------------------------------------------------------------- basics
    @property
    def image_size(self) -> int:
        return int(self.sam.image_size)

    def num_parameters(self) -> Dict[str, int]:
        """Trainable (block) and frozen (SAM2) parameter counts."""
        return {"shift_block": count_parameters(self.shift), "sam2_frozen": count_parameters(self.sam)}

    def train(self, mode: bool = True):
        super().train(mode)
        self.sam.eval()  # frozen: SAM2 always computes as at inference
        return self

    def image_embedding(self, feats: FrameFeatures) -> torch.Tensor:
        """i = E(I): the frame's embedding as SAM2's decoder sees it without memory."""
        return no_memory_embedding(self.sam, feats)

    def point_embedding(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """p = xi(P): SAM2's prompt-encoder embedding of each click (no padding point)."""
        return self.sam.sam_prompt_encoder._embed_points(coords, labels.to(torch.int32), pad=False)

    # -------------------------------------------------------------- refine
    def refine(self, coords: torch.Tensor, labels: torch.Tensor, image_embed: Optional[torch.Tensor],
               mode: Optional[str] = None, *, keys: Optional[BlockKeys] = None) -> torch.Tensor:
        """P' for the clicks ``coords`` (B, P, 2) (model pixels) with
        ``labels`` (B, P) on one frame (``image_embed`` (1, C, h, w)) or B
        frames (B, C, h, w); or the block's ``keys`` of that frame. Unselected
        clicks are returned unchanged."""
        select = shift_selection(labels, mode or self.shift_points)
        if not bool(select.any()):
            return coords
        if keys is None:
            keys = self.shift.image_keys(image_embed)
        return self._refine_selected(coords, labels, select, keys)

    def _refine_selected(self, coords: torch.Tensor, labels: torch.Tensor, select: torch.Tensor, keys: BlockKeys,
                         state: Optional[tuple] = None) -> torch.Tensor:
        offset = torch.zeros_like(coords)
        frames = keys.frames
        if frames == 1:  # all clicks of the frame in one row: tokens never interact
            pe = self.point_embedding(coords[select][None], labels[select][None])
            offset = offset.index_put((select,), self.shift(pe, keys=keys, state=state)[0].to(coords.dtype))
        else:
            if frames != coords.shape[0]:
                raise ConfigError(f"rpsam2: {coords.shape[0]} prompts for {frames} frame embeddings")
            pe = self.point_embedding(coords, labels)
            offset = torch.where(select[..., None], self.shift(pe, keys=keys, state=state).to(coords.dtype), offset)
        return apply_offset(coords, offset, self.image_size)

    def segment(
        self,
        feats: FrameFeatures,
        coords: torch.Tensor,
        labels: torch.Tensor,
        *,
        refine: bool = True,
        image_embed: Optional[torch.Tensor] = None,
        mode: Optional[str] = None,
    ) -> Tuple[HeadOutput, torch.Tensor]:
        """(SAM2 head output, the points used) for N prompts on ``feats``.
        Multimask output follows SAM2's own rule (one click: 3 masks, the
        best by predicted IoU in ``best_masks``), as plain SAM2 clicks do."""
        if image_embed is None:
            image_embed = self.image_embedding(feats)
        if refine:
            coords = self.refine(coords, labels, image_embed, mode)
        multimask = bool(self.sam._use_multimask(True, {"point_labels": labels}))
        out = decode_masks(self.sam, feats, point_coords=coords, point_labels=labels.to(torch.int32),
                           multimask_output=multimask, image_embed=image_embed)
        return out, coords

    def frame_keys(self, feats: FrameFeatures, state: Optional[tuple] = None) -> BlockKeys:
        """The block's keys/values of a frame, cached for the frame's cached
        features (the engine hands the same tensors for a frame while it
        keeps them) and the block's current weights (versions; ``state``:
        ``parameter_state(self.shift)`` when the caller just took it): a
        later click on the frame runs only the click's side of the block."""
        source = feats.backbone_fpn[-1]
        version = (parameter_state(self.shift) if state is None else state, low_precision_dtype(source.device.type))
        hit = self._keys_cache.get(id(source))
        if hit is not None and hit[0]() is source and hit[1] == version and not torch.is_grad_enabled():
            return hit[2]
        keys = self.shift.image_keys(self.image_embedding(feats))
        if not torch.is_grad_enabled():
            self._keys_cache[id(source)] = (weakref.ref(source), version, keys)
            while len(self._keys_cache) > 2:
                self._keys_cache.pop(next(iter(self._keys_cache)))
        return keys

    def prompt_hook(self, frame_idx: int, coords: torch.Tensor, labels: torch.Tensor,
                    feats: FrameFeatures) -> Tuple[torch.Tensor, torch.Tensor]:
        """The engine's ``PromptHook``: refined points, same labels."""
        select = shift_selection(labels, self.shift_points)
        if not bool(select.any()):
            return coords, labels
        state = parameter_state(self.shift)  # once per click: the keys' and the packed block's version
        return self._refine_selected(coords, labels, select, self.frame_keys(feats, state), state), labels

    def click_session(self, **options: Any):
        """A ``ClickSession`` whose clicks are refined: call
        ``segment_frame(frames, model.sam, t, prompts)``."""
        from ...sam2_engine.session import ClickSession

        return ClickSession(prompt_hook=self.prompt_hook, **options)

    def engine(self, frames: Any, **options: Any):
        """A ``StreamingSAM2`` on the base SAM2 whose clicks are refined."""
        from ...sam2_engine.engine import StreamingSAM2

        return StreamingSAM2(self.sam, frames, prompt_hook=self.prompt_hook, **options)

    # ------------------------------------------------------------ training
    def forward(self, batch: Mapping[str, Any]) -> Dict[str, Any]:
        from .train import training_forward

        return training_forward(self, batch)


def build_rpsam2(config: Mapping[str, Any]) -> RPSAM2:
    """Base SAM2 (``sam2_config``, ``base_weights``, ``base_variant``,
    ``image_size``, ``seed`` for random-init bases) + a fresh shift block."""
    from ...sam2_engine.build import build_model

    size = config.get("image_size")
    sam = build_model(
        str(config.get("sam2_config") or "sam2.1_hiera_tiny"), config.get("base_weights") or None,
        variant=config.get("base_variant") or None, device="cpu",
        image_size=None if size in (None, "", 0) else int(size), seed=int(config.get("seed", 0)),
    )
    return RPSAM2(
        sam, num_layers=int(config.get("shift_layers", 6)), num_heads=int(config.get("shift_heads", 8)),
        mlp_dim=int(config.get("shift_mlp_dim", 2048)), scale_init=float(config.get("scale_init", 0.1)),
        image_pos_init=str(config.get("image_pos_init", "sam")), shift_points=str(config.get("shift_points", "first")),
        train_options=config,
    )


def save_block(model: RPSAM2, path, config: Mapping[str, Any]):
    """Write the block alone in the trainer's checkpoint format (loadable by
    ``load_rpsam2`` / ``surgseg predict|evaluate rpsam2``), with its base."""
    from ... import __version__
    from ...config import plain_config
    from ...training.checkpoint import save_checkpoint

    state = {f"shift.{k}": v.detach().cpu() for k, v in model.shift.state_dict().items()}
    return save_checkpoint(path, {"model": state, "method": "rpsam2", "config": plain_config(dict(config)),
                                  "trainable_only": True, "base_model": dict(model.surgseg_base),
                                  "epoch": 0, "step": 0, "metrics": {}, "surgseg_version": __version__})


def load_rpsam2(weights, config: Optional[Mapping[str, Any]] = None, device: Optional[str] = None) -> RPSAM2:
    """RP-SAM2 from a checkpoint path or registered weights name; the base
    SAM2 is rebuilt from the checkpoint's config and must hash the same."""
    from ...training.inference import load_trained_model

    _, model, _, _ = load_trained_model("rpsam2", weights, config, device)
    return model


def register_weights(checkpoint, name: str, metrics: Optional[Mapping[str, Any]] = None):
    """Register a trained block in the weights registry (method ``rpsam2``,
    base = the SAM2 weights it was trained on)."""
    from ...training.checkpoint import load_checkpoint
    from ...weights import register_checkpoint

    ckpt = load_checkpoint(checkpoint, expected="an rpsam2 checkpoint")
    if ckpt.get("method") != "rpsam2":
        raise ConfigError(f"{checkpoint} was written by method {ckpt.get('method')!r}, not 'rpsam2'")
    base = dict(ckpt.get("base_model") or {})
    return register_checkpoint(checkpoint, name=name, method="rpsam2", base=base.get("name"),
                               config=base.get("config"), metrics=dict(metrics or ckpt.get("metrics") or {}))
