"""F2PASeg's model: SAM2 with a feature-fusion module in the mask decoder
(paper sec. 2.2, eq. 1-2), registered as the SAM2 model variant "f2paseg".

Where SAM2's decoder upsamples the memory-conditioned embedding it adds the
high-resolution backbone features (stride 8: 64 channels, stride 4: 32;
already projected by ``conv_s1``/``conv_s0``)::

    SAM2:     x = F_mem + F_high                      (then LayerNorm+GELU / GELU)
    F2PASeg:  x = F_mem + F_high + F'_res             (SAM2's sum kept as the skip path)
              F_res  = relu(H(F_high) + F_mem)        eq. 1, H = conv-BN-ReLU
              F'_res = f(F_res) + alpha * B(A F_res)  eq. 2, f a conv, A/B 1x1 (rank r)

with F_mem = the transposed-conv output (``dc1(src)``, ``dc2(...)``). The
paper calls this "residual computation when fusing features": the residual
branch F'_res is added to SAM2's own sum. Its last layers (f and B) start at
zero, so an untrained module is exactly SAM2 (official weights load with
only ``sam_mask_decoder.fusion.*`` new, masks unchanged); gradients still
reach f and B from the first step (LoRA's B = 0 convention), and A and H
once those are non-zero.

Choices the paper leaves open (config keys of the variant):
  * ``rank`` r = 4: r << d for both levels (d = 64 and 32, i.e. d/16 and
    d/8); LoRA's usual 4-8, the smaller one because d = 32 at stride 4.
  * ``alpha`` = 1.0: the paper's alpha multiplies B(A x) directly (no
    alpha/r); with B = 0 at start alpha only scales the LoRA branch's
    effective step size, 1 treats it like the conv path f.
  * ``kernel_size`` = 3 for H's conv and f (residual-block convention); the
    module then has 0.09 M parameters. On SAM2.1 hiera-tiny everything
    trainable is 39.06 M (SAM2-t 38.96 M + fusion; the paper: "39.0 M"),
    and freezing the mask decoder (4.2 M) except the fusion module, as the
    paper's sec. 3.2 says, leaves 34.84 M (the paper's 34.8 M "with LoRA")
    (see ``trainable_parameters`` / ``freeze_for_finetuning``).
  * BN (inside H) behaves as any BatchNorm: batch statistics in
    ``train()``, running statistics in ``eval()`` (the engine and
    ``build_model`` use eval). Either way the untrained module is the
    identity, because f and B are zero; the tests check both modes.

``FusionMaskDecoder`` subclasses SAM2's ``MaskDecoder`` and reuses all its
modules and weights; only ``predict_masks`` is overridden, with SAM2's body
and the two additions replaced (a test checks it equals SAM2's when the
fusion is untrained, which guards against a changed sam2 release).

Decoding a box (or several clicks) at inference: SAM2's video predictor
settings (``sam2_engine.build.VIDEO_OVERRIDES``) include an inference-only
"stability fallback" (``dynamic_multimask_via_stability``): when the
single-mask output (mask token 0) is unstable, the best of the three
multimask outputs (tokens 1-3) replaces it. Training never does this: a box
is always decoded by token 0, and only token 0 is supervised. F2PASeg's
fine-tuning gives boxes only, so tokens 1-3 never learn the anatomy, and
with a trainable mask decoder (the demo recipe) they drift; the fallback then
replaced the trained masks by untrained ones on most frames (issue 14: the
demo F2PASeg drew one mask for every box, Dice 0.06 on its own training
clip). The variant therefore decodes the way it is trained: fallback off
(``stability_fallback=False``, the default; True restores SAM2's).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from sam2.modeling.sam.mask_decoder import MaskDecoder
from sam2.modeling.sam2_utils import MLP

from ...errors import ConfigError
from ...sam2_engine.variants import Variant, register_variant

VARIANT_NAME = "f2paseg"
NEW_KEYS = ("sam_mask_decoder.fusion",)
DEFAULT_RANK = 4
DEFAULT_ALPHA = 1.0
DEFAULT_KERNEL_SIZE = 3
# prompt partitioning (paper sec. 2.2): the memory attention sees the two
# latest prompted frames; the streaming engine reads this from the model
DEFAULT_KEEP_RECENT_PROMPT_FRAMES = 2
# SAM2's inference-only stability fallback for single-mask outputs (see the module doc): off
DEFAULT_STABILITY_FALLBACK = False


class ResidualFusion(nn.Module):
    """One fusion level: F'_res (eq. 1-2) from F_high and F_mem, both (N, d, h, w).

    ``forward`` returns the residual F'_res only; the decoder adds it to
    SAM2's F_mem + F_high."""

    def __init__(self, channels: int, *, rank: int = DEFAULT_RANK, alpha: float = DEFAULT_ALPHA,
                 kernel_size: int = DEFAULT_KERNEL_SIZE) -> None:
        super().__init__()
        if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= channels:
            raise ConfigError(f"f2paseg: LoRA rank must be an integer in 1..{channels}, got {rank!r}")
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"f2paseg: kernel_size must be an odd integer >= 1, got {kernel_size!r}")
        pad = kernel_size // 2
        self.channels, self.rank, self.alpha = channels, rank, float(alpha)
        # H: conv-BN-ReLU on F_high (eq. 1); the conv's bias is BN's shift
        self.h_conv = nn.Conv2d(channels, channels, kernel_size, padding=pad, bias=False)
        self.h_bn = nn.BatchNorm2d(channels)
        # f: the main convolutional path of eq. 2, zero so the module starts as the identity
        self.f = nn.Conv2d(channels, channels, kernel_size, padding=pad)
        # LoRA branch: A (r x d), B (d x r) as 1x1 convs over channels; B = 0
        self.lora_a = nn.Conv2d(channels, rank, 1, bias=False)
        self.lora_b = nn.Conv2d(rank, channels, 1, bias=False)
        nn.init.zeros_(self.f.weight)
        nn.init.zeros_(self.f.bias)
        nn.init.zeros_(self.lora_b.weight)
        # A keeps nn.Conv2d's default (kaiming-uniform) init, as LoRA's A

    def h(self, f_high: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.h_bn(self.h_conv(f_high)))

    def forward(self, f_high: torch.Tensor, f_mem: torch.Tensor) -> torch.Tensor:
        if not self.training and not torch.is_grad_enabled():
            return self._forward_merged(f_high, f_mem)
        f_res = torch.relu(self.h(f_high) + f_mem)  # eq. 1
        return self.f(f_res) + self.alpha * self.lora_b(self.lora_a(f_res))  # eq. 2

    def merged_weights(self):
        """Inference weights of the same maps: BN folded into H's conv, and the
        LoRA product alpha * B A (a 1x1 conv) added to the centre tap of f, so
        that eq. 1-2 cost two convolutions (the fusion was ~5 % of a tracked
        frame's CPU time with five)."""
        bn = self.h_bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        h_w = self.h_conv.weight * scale[:, None, None, None]
        h_b = bn.bias - bn.running_mean * scale
        f_w = self.f.weight.clone()
        c = f_w.shape[-1] // 2
        f_w[:, :, c, c] += self.alpha * (self.lora_b.weight[:, :, 0, 0] @ self.lora_a.weight[:, :, 0, 0])
        return h_w, h_b, f_w, self.f.bias

    def _forward_merged(self, f_high: torch.Tensor, f_mem: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        h_w, h_b, f_w, f_b = self.merged_weights()
        pad = self.f.padding
        if f_high.shape[0] > 1 and f_high.stride(0) == 0:  # one frame's features shared by all objects: H once
            h = torch.relu(F.conv2d(f_high[:1], h_w, h_b, padding=pad))  # broadcast over the objects below
        else:
            h = torch.relu(F.conv2d(f_high, h_w, h_b, padding=pad))
        # f_mem first: the sum takes its (per-object, channels-last) layout, which f's convolution wants; with
        # an expanded h first it came out in another layout (512 px, 6 objects, stride 4: 19 vs 11 ms a call)
        return F.conv2d(torch.relu(f_mem + h), f_w, f_b, padding=pad)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, rank={self.rank}, alpha={self.alpha}"


class FusionMaskDecoder(MaskDecoder):
    """SAM2's ``MaskDecoder`` with F2PASeg's fusion at strides 8 and 4
    (``fusion["s8"]``, ``fusion["s4"]``)."""

    def add_fusion(self, *, rank: int = DEFAULT_RANK, alpha: float = DEFAULT_ALPHA,
                   kernel_size: int = DEFAULT_KERNEL_SIZE) -> None:
        if not self.use_high_res_features:
            raise ConfigError("f2paseg needs a SAM2 model that feeds high-resolution features to its mask decoder "
                              "(use_high_res_features_in_sam: true, as every SAM 2/2.1 config)")
        d = self.transformer_dim
        device = self.iou_token.weight.device
        self.fusion = nn.ModuleDict({
            "s8": ResidualFusion(d // 4, rank=rank, alpha=alpha, kernel_size=kernel_size),
            "s4": ResidualFusion(d // 8, rank=min(rank, d // 8), alpha=alpha, kernel_size=kernel_size),
        }).to(device)

    @classmethod
    def from_decoder(cls, decoder: MaskDecoder, **fusion_options: Any) -> "FusionMaskDecoder":
        """A fusion decoder holding ``decoder``'s modules and weights (same
        settings, the same submodule objects)."""
        up = decoder.output_upscaling
        obj_mlp = isinstance(getattr(decoder, "pred_obj_score_head", None), MLP)
        new = cls(
            transformer_dim=decoder.transformer_dim,
            transformer=decoder.transformer,
            num_multimask_outputs=decoder.num_multimask_outputs,
            activation=type(up[2]),
            iou_head_depth=decoder.iou_prediction_head.num_layers,
            iou_head_hidden_dim=decoder.iou_prediction_head.layers[0].out_features,
            use_high_res_features=decoder.use_high_res_features,
            iou_prediction_use_sigmoid=decoder.iou_prediction_head.sigmoid_output,
            dynamic_multimask_via_stability=decoder.dynamic_multimask_via_stability,
            dynamic_multimask_stability_delta=decoder.dynamic_multimask_stability_delta,
            dynamic_multimask_stability_thresh=decoder.dynamic_multimask_stability_thresh,
            pred_obj_scores=decoder.pred_obj_scores,
            pred_obj_scores_mlp=obj_mlp,
            use_multimask_token_for_obj_ptr=decoder.use_multimask_token_for_obj_ptr,
        )
        # SAM2's submodules themselves (not copies): all weights carry over
        for name, module in decoder.named_children():
            setattr(new, name, module)
        new.to(decoder.iou_token.weight.device)
        new.train(decoder.training)
        new.add_fusion(**fusion_options)
        return new

    def fuse(self, level: str, f_mem: torch.Tensor, f_high: torch.Tensor) -> torch.Tensor:
        """SAM2's ``F_mem + F_high`` plus F2PASeg's residual F'_res."""
        return f_mem + f_high + self.fusion[level](f_high, f_mem)

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        repeat_image: bool,
        high_res_features: Optional[List[torch.Tensor]] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        # SAM2 1.1's MaskDecoder.predict_masks; only the two feature additions differ
        s = 0
        if self.pred_obj_scores:
            output_tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight],
                                      dim=0)
            s = 1
        else:
            output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(sparse_prompt_embeddings.size(0), -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)
        if repeat_image:
            src = torch.repeat_interleave(image_embeddings, tokens.shape[0], dim=0)
        else:
            assert image_embeddings.shape[0] == tokens.shape[0]
            src = image_embeddings
        src = src + dense_prompt_embeddings
        assert image_pe.size(0) == 1, "image_pe should have size 1 in batch dim (from `get_dense_pe()`)"
        pos_src = torch.repeat_interleave(image_pe, tokens.shape[0], dim=0)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, s, :]
        mask_tokens_out = hs[:, s + 1: (s + 1 + self.num_mask_tokens), :]
        src = src.transpose(1, 2).view(b, c, h, w)
        dc1, ln1, act1, dc2, act2 = self.output_upscaling
        feat_s0, feat_s1 = high_res_features
        upscaled_embedding = act1(ln1(self.fuse("s8", dc1(src), feat_s1)))  # SAM2: dc1(src) + feat_s1
        upscaled_embedding = act2(self.fuse("s4", dc2(upscaled_embedding), feat_s0))  # SAM2: dc2(.) + feat_s0
        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in range(self.num_mask_tokens)], dim=1)
        b, c, h, w = upscaled_embedding.shape
        masks = (hyper_in @ upscaled_embedding.view(b, c, h * w)).view(b, -1, h, w)
        iou_pred = self.iou_prediction_head(iou_token_out)
        if self.pred_obj_scores:
            assert s == 1
            object_score_logits = self.pred_obj_score_head(hs[:, 0, :])
        else:
            object_score_logits = 10.0 * iou_pred.new_ones(iou_pred.shape[0], 1)
        return masks, iou_pred, mask_tokens_out, object_score_logits


def add_fusion(model, rank: int = DEFAULT_RANK, alpha: float = DEFAULT_ALPHA, kernel_size: int = DEFAULT_KERNEL_SIZE,
               keep_recent_prompt_frames: int = DEFAULT_KEEP_RECENT_PROMPT_FRAMES,
               stability_fallback: bool = DEFAULT_STABILITY_FALLBACK) -> None:
    """The "f2paseg" variant: fusion decoder in place of SAM2's; prompt
    partitioning as the engine default (``keep_recent_prompt_frames``, 0 = off);
    single-mask outputs decoded as in training (``stability_fallback`` False:
    see the module doc)."""
    if not isinstance(keep_recent_prompt_frames, int) or keep_recent_prompt_frames < 0:
        raise ConfigError(f"f2paseg: keep_recent_prompt_frames must be an integer >= 0 (0: off), "
                          f"got {keep_recent_prompt_frames!r}")
    if not isinstance(stability_fallback, bool):
        raise ConfigError(f"f2paseg: stability_fallback must be true or false, got {stability_fallback!r}")
    model.sam_mask_decoder = FusionMaskDecoder.from_decoder(model.sam_mask_decoder, rank=rank, alpha=alpha,
                                                            kernel_size=kernel_size)
    if not stability_fallback:
        model.sam_mask_decoder.dynamic_multimask_via_stability = False
    model.surgseg_keep_recent_prompt_frames = keep_recent_prompt_frames or None


VARIANT = register_variant(Variant(
    VARIANT_NAME,
    add_fusion,
    new_keys=NEW_KEYS,
    description="F2PASeg: residual feature fusion with LoRA in the mask decoder (strides 8 and 4), "
                "prompt partitioning (two latest prompted frames)",
    defaults={"rank": DEFAULT_RANK, "alpha": DEFAULT_ALPHA, "kernel_size": DEFAULT_KERNEL_SIZE,
              "keep_recent_prompt_frames": DEFAULT_KEEP_RECENT_PROMPT_FRAMES,
              "stability_fallback": DEFAULT_STABILITY_FALLBACK},
))


def build_f2paseg(config: str = "sam2.1_hiera_tiny", checkpoint=None, *, rank: int = DEFAULT_RANK,
                  alpha: float = DEFAULT_ALPHA, kernel_size: int = DEFAULT_KERNEL_SIZE,
                  keep_recent_prompt_frames: int = DEFAULT_KEEP_RECENT_PROMPT_FRAMES,
                  stability_fallback: bool = DEFAULT_STABILITY_FALLBACK, **kwargs):
    """``build_model(config, checkpoint, variant="f2paseg", ...)`` with the fusion options."""
    from ...sam2_engine.build import build_model

    options = {"rank": rank, "alpha": alpha, "kernel_size": kernel_size,
               "keep_recent_prompt_frames": keep_recent_prompt_frames, "stability_fallback": stability_fallback}
    return build_model(config, checkpoint, variant=VARIANT_NAME, variant_options=options, **kwargs)


# ------------------------------------------------------------ parameters
def _group(name: str) -> str:
    if name.startswith("sam_mask_decoder.fusion."):
        return "fusion"
    return name.split(".", 1)[0]


def trainable_parameters(model: nn.Module) -> Dict[str, Dict[str, int]]:
    """Parameters by module (the model's top-level children, with the fusion
    module apart from the rest of the mask decoder): ``{module: {"trainable":
    n, "total": n}}`` plus ``"all"``."""
    out: Dict[str, Dict[str, int]] = {}
    for name, p in model.named_parameters():
        row = out.setdefault(_group(name), {"trainable": 0, "total": 0})
        row["total"] += p.numel()
        row["trainable"] += p.numel() if p.requires_grad else 0
    out["all"] = {k: sum(r[k] for r in out.values()) for k in ("trainable", "total")}
    return out


def format_parameter_table(counts: Mapping[str, Mapping[str, int]]) -> str:
    """``trainable_parameters`` as an aligned text table (millions)."""
    width = max(len(k) for k in counts)
    lines = [f"{'module':<{width}}  trainable      total"]
    for name, row in counts.items():
        lines.append(f"{name:<{width}}  {row['trainable'] / 1e6:8.3f} M {row['total'] / 1e6:8.3f} M")
    return "\n".join(lines)


def freeze_for_finetuning(model: nn.Module, *, freeze_mask_decoder: bool = True) -> None:
    """The paper's fine-tuning setup (sec. 3.2): the mask decoder is frozen
    except the fusion module (which must train); everything else trains."""
    for name, p in model.named_parameters():
        p.requires_grad_(not (freeze_mask_decoder and name.startswith("sam_mask_decoder.")
                              and not name.startswith("sam_mask_decoder.fusion.")))
