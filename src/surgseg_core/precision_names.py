"""Names of SAM2's inference precisions, without importing torch (the CLI's
``--precision`` and the widgets' picker list them; ``device.resolve_inference_precision``
turns a name into dtypes)."""

INFERENCE_PRECISIONS = ("auto", "bf16", "bf16-encoder", "fp32-fast", "fp32")
#: What each choice means (the CLI's --precision help and the widgets' tooltip).
INFERENCE_PRECISION_HELP = (
    "auto (default): bf16 on a CUDA GPU; on a CPU with native bf16 (AVX512-BF16/AMX) a model at >= 512 px "
    "in bf16, any other CPU run fp32-fast (float32 with SAM2's arithmetic reordered where exact: equal up to "
    "rounding, faster); fp32 elsewhere. bf16-encoder: only the image encoder in bf16. fp32 = SAM2's own "
    "arithmetic, bit-equal to SAM2")
