"""Device and precision choice, shared by the SAM2 engine, the trainer and
every widget: CUDA > MPS > CPU; bf16 autocast on CUDA (when the GPU has
bf16); for SAM2 inference on a CPU with native bf16 (AVX512-BF16 or AMX),
bf16 for models at >= 512 px; plain float32 elsewhere; TF32 matmuls on
Ampere+."""
from __future__ import annotations

import contextlib
import copy as _copy
import functools
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Optional, Union

import torch

from .errors import ConfigError

DeviceLike = Optional[Union[str, torch.device]]


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def available_devices() -> list:
    """Names a user can choose: "auto", "cpu", then "cuda" / "mps" when present."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names.append("cuda")
    if _mps_available():
        names.append("mps")
    return names


def rank_gpu(local_rank: int) -> int:
    """The GPU of the process with ``local_rank`` on its node: round-robin
    over the node's GPUs, so more processes than GPUs share them."""
    return local_rank % max(1, torch.cuda.device_count())


def resolve_device(prefer: DeviceLike = None, local_rank: int = 0) -> torch.device:
    """``prefer`` ("cpu", "cuda", "cuda:1", "mps", a torch.device) or, when
    None / "auto", the best available; plain "cuda" means this rank's GPU
    (``rank_gpu``: more processes than GPUs share them)."""
    if isinstance(prefer, torch.device):
        prefer = str(prefer)
    name = str(prefer or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", rank_gpu(local_rank))
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device must be auto, cpu, cuda[:N] or mps, got {prefer!r}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {prefer!r} requested but no CUDA GPU is available on this machine (use cpu)")
        return torch.device("cuda", rank_gpu(local_rank)) if device.index is None else device
    if device.type == "mps":
        if not _mps_available():
            raise ConfigError(f"device {prefer!r} requested but Apple MPS is not available on this machine (use cpu)")
        return device
    if device.type == "cpu":
        return device
    raise ConfigError(f"device must be auto, cpu, cuda[:N] or mps, got {prefer!r}")


def _precision_name(precision: Optional[Union[str, bool]]) -> str:
    """None -> "auto", True -> "bf16", False -> "fp32" (the engine's older
    ``use_autocast``), names lower-cased."""
    if precision is None:
        return "auto"
    if precision is True:
        return "bf16"
    if precision is False:
        return "fp32"
    return str(precision).lower()


def resolve_precision(precision: Optional[Union[str, bool]], device: torch.device) -> Optional[torch.dtype]:
    """Autocast dtype for ``precision`` ("auto" | "bf16" | "fp32"; True /
    False / None as the engine's ``use_autocast``): bf16 on a CUDA GPU that
    has it, None (float32) elsewhere: CPU bf16 is slow on most CPUs and MPS
    autocast is incomplete."""
    p = _precision_name(precision)
    if p == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if p in ("bf16", "bfloat16"):
        return torch.bfloat16
    if p in ("fp32", "float32", "32"):
        return None
    raise ConfigError(f"precision must be auto, bf16, bf16-encoder, fp32-fast (SAM2 inference only) or fp32, "
                      f"got {precision!r}")


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles);
    without it bf16 matmuls are emulated and slower than float32."""
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # a torch build without the probe's backend
            continue
    return False


@dataclass(frozen=True)
class InferencePrecision:
    """Autocast dtypes for SAM2 inference: ``encoder`` for the image encoder
    (the bulk of the work), ``heads`` for everything else (memory attention,
    memory encoder, prompt encoder, mask decoder). None = float32."""

    encoder: Optional[torch.dtype]
    heads: Optional[torch.dtype]
    #: float32 with SAM2's arithmetic reordered where that is exact in real arithmetic
    #: (``sam2_engine.heads.reordered_float32``): equal to SAM2's up to float rounding, not bit-equal
    reordered: bool = False

    @property
    def name(self) -> str:
        if self.encoder is None and self.heads is None:
            return "fp32-fast" if self.reordered else "fp32"
        if self.heads is None:
            return "bf16-encoder"
        return "bf16"




#: Below this processing size bf16 did not pay on a CPU (the demo-size model at 256 px: encoder
#: 0.85x, whole frame 1.00x; benchmarks/cpu_precision.py): casts cost what the smaller matmuls save.
CPU_BF16_MIN_IMAGE_SIZE = 512


def resolve_inference_precision(
    precision: Optional[Union[str, bool]], device: torch.device, image_size: Optional[int] = None
) -> InferencePrecision:
    """SAM2 inference precision for ``precision`` ("auto" | "bf16" |
    "bf16-encoder" | "fp32"; True / False / None as for
    ``resolve_precision``) and a model processing ``image_size`` px.

    "auto": bf16 throughout on a CUDA GPU with bf16 (as before); on a CPU
    with native bf16, bf16 throughout when the model works at >=
    ``CPU_BF16_MIN_IMAGE_SIZE`` px, else "fp32-fast" (float32 with SAM2's
    arithmetic reordered where exact in real arithmetic, see
    ``sam2_engine.heads.reordered_float32``: the demo-size model at 256 px
    0.89-0.93x the time of plain float32 a frame, SAM2.1-tiny at 512 px
    0.94-0.95x; masks tested against float32's);
    "fp32": SAM2's own float32 arithmetic (bit-equal to SAM2VideoPredictor). Measured on an AMD
    EPYC with AVX512-BF16, 2 threads (BENCHMARKS.md, cpu-precision): the
    image encoder of SAM2.1-tiny ran 1.5x (512 px) and 1.8x (1024 px) faster
    in bf16; a whole propagation step in bf16 was as fast as or faster than
    with the encoder alone in bf16 ("bf16-encoder", auto's choice before the
    click heads got a bf16 path in ``sam2_engine.fast_heads``), and the
    cached click got faster. Masks: mean IoU >= 0.99 per object against
    float32 over 64 tracked frames (tests/test_engine_precision.py)."""
    p = _precision_name(precision)
    if p == "auto":
        if device.type == "cuda":
            dtype = resolve_precision("auto", device)
            return InferencePrecision(dtype, dtype)
        big_enough = image_size is None or int(image_size) >= CPU_BF16_MIN_IMAGE_SIZE
        if device.type == "cpu" and big_enough and cpu_has_fast_bf16():
            return InferencePrecision(torch.bfloat16, torch.bfloat16)
        return InferencePrecision(None, None, reordered=device.type == "cpu")
    if p == "fp32-fast":
        return InferencePrecision(None, None, reordered=device.type == "cpu")  # the reorderings are CPU-only
    if p == "bf16-encoder":
        return InferencePrecision(torch.bfloat16, None)
    dtype = resolve_precision(p, device)  # bf16 / fp32, or the error listing the choices
    return InferencePrecision(dtype, dtype)


def autocast(device: torch.device, precision: Union[None, bool, str, torch.dtype] = None) -> ContextManager:
    """``torch.autocast`` for ``precision`` (a dtype, or what
    ``resolve_precision`` takes; None = auto) on ``device``; nothing when the
    result is float32."""
    dtype = precision if isinstance(precision, torch.dtype) else resolve_precision(precision, device)
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def enable_fast_math(device: torch.device) -> None:
    """TF32 matmuls on Ampere+ GPUs (what SAM2's own demos enable)."""
    if device.type == "cuda" and torch.cuda.get_device_properties(device).major >= 8:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def describe_device(device: Union[str, torch.device]) -> str:
    """A human name for ``device`` in result tables: the GPU's model, or the
    CPU's model and the threads torch uses."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        import platform
        from pathlib import Path

        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        return f"cpu ({name}, {torch.get_num_threads()} threads)"
    return str(device)


def low_precision_dtype(device_type: str) -> Optional[torch.dtype]:
    """The autocast dtype active on ``device_type`` (bf16 / fp16), or None
    when autocast is off: hand-written inference paths (the fast click
    heads, RP-SAM2's block) then compute in that dtype with ``cast_copy``
    weights instead of letting autocast re-cast every weight on every call."""
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        if dtype in (torch.bfloat16, torch.float16):
            return dtype
    return None


_derived_lock = threading.Lock()
_derived: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # module -> {kind: (key, value)}


def parameter_state(module: torch.nn.Module) -> tuple:
    """``(id, version)`` of every parameter of ``module``: changes when a
    parameter is updated in place (optimizer step, ``load_state_dict``) or
    replaced. The caches of per-frame and per-weights inference work key on
    it; read from each submodule's own table (``parameters()`` builds every
    parameter's dotted name: ~2x slower, on every click)."""
    return tuple((id(p), p._version) for m in module.modules() for p in m._parameters.values() if p is not None)


def cast_copy(module: torch.nn.Module, dtype: Optional[torch.dtype]) -> torch.nn.Module:
    """An inference copy of ``module`` in ``dtype`` (the module itself for
    None / float32), kept while the module's parameters are unchanged
    (their versions: an optimizer step or ``load_state_dict`` makes a new
    copy). One copy per module: a second dtype replaces the first."""
    if dtype is None or dtype == torch.float32:
        return module
    return derived_from_weights(module, "cast_copy", dtype,
                                lambda: _copy.deepcopy(module).to(dtype).eval().requires_grad_(False))


def derived_from_weights(module: torch.nn.Module, kind: str, key: Any, build: Callable[[], Any],
                         state: Optional[tuple] = None) -> Any:
    """``build()``'s inference form of ``module``'s weights (a cast copy, packed
    layers), kept while ``key`` is the same and the parameters are unchanged
    (``parameter_state``; ``state``: that, when the caller has just taken
    it). One value per (module, kind): a new key replaces the old value."""
    full_key = (key, parameter_state(module) if state is None else state)
    with _derived_lock:
        hit = _derived.get(module, {}).get(kind)
        if hit is not None and hit[0] == full_key:
            return hit[1]
    value = build()
    with _derived_lock:
        _derived.setdefault(module, {})[kind] = (full_key, value)
    return value
