"""Choosing the numeric precision the hardware runs natively.

bf16 autocast speeds VGG16 up on CPUs with AVX-512-bf16 or AMX, but on a CPU without them it is emulated and far
*slower* than fp32. So ``auto`` never picks bf16 blindly: it asks the CPU (or GPU) what it supports. On an x86 CPU
without AMX, ``auto`` computes the features in int8 where it can (faster cache builds than fp32 with AVX2 kernels and
than bf16 with AVX-512-bf16 and VNNI, at the same accuracy; measured: docs/training.md, "Precision and int8 features")
and trains the heads in the CPU's native precision (fp32, or bf16 where the CPU has it). With AMX, bf16 features are
nearly as fast as int8 and closer to fp32, so they stay. Other CPUs (ARM) keep fp32 features: int8 was not measured
there.
"""

from __future__ import annotations

import platform
from typing import Optional

import torch

_ALIASES = {
    "32": "32-true", "32-true": "32-true", "fp32": "32-true",
    "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed",
    "16": "16-mixed", "16-mixed": "16-mixed", "fp16": "16-mixed",
}
#: Precisions of the features only: the backbone's passes run in it (on the CPU, through onnxruntime:
#: ``project.models.quantized``) and the heads train in the device's native float precision.
FEATURE_ONLY = ("int8",)
CHOICES = ("auto", "32-true", "bf16-mixed", "16-mixed", "32", "bf16", "16", *FEATURE_ONLY)


def cpu_has_amx() -> bool:
    """True when this CPU has AMX tiles (Intel Xeon since Sapphire Rapids), where bf16 runs nearly as fast as int8."""
    return bool(torch.cpu._is_amx_tile_supported())


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 matmuls in hardware (AVX-512-bf16 or AMX)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or cpu_has_amx())


def cpu_is_x86() -> bool:
    """True on x86-64, the CPUs int8 features were measured on."""
    return platform.machine().lower() in ("x86_64", "amd64")


def auto_prefers_int8(device_type: str) -> bool:
    """Whether ``auto`` wants int8 features on ``device_type``: an x86 CPU without AMX (with or without
    AVX-512-bf16)."""
    return device_type == "cpu" and cpu_is_x86() and not cpu_has_amx()


def native_precision(device_type: str) -> str:
    """The fastest precision that ``device_type`` (``"cpu"`` or ``"cuda"``) runs without emulation."""
    if device_type == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def resolve_precision(precision: str, device_type: str) -> str:
    """Turn ``auto`` or a short alias into one of Lightning's names: ``32-true``, ``bf16-mixed``, ``16-mixed``
    (the training precision; a features-only precision such as ``int8`` trains in the native one)."""
    if precision == "auto" or precision in FEATURE_ONLY:
        return native_precision(device_type)
    try:
        return _ALIASES[str(precision)]
    except KeyError:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(CHOICES)}") from None


def resolve_feature_precision(precision: str, device_type: str, int8_usable: bool = False) -> str:
    """The feature cache's precision: a features-only precision (``int8``) as given; for ``auto`` on an x86 CPU
    without AMX, ``int8`` when the caller says it is usable (the onnx extra installed, one process, a feature
    cache, a new run); otherwise the training precision."""
    if precision in FEATURE_ONLY:
        return precision
    if precision == "auto" and int8_usable and auto_prefers_int8(device_type):
        return "int8"
    return resolve_precision(precision, device_type)


def autocast_dtype(precision: str) -> Optional[torch.dtype]:
    """The autocast dtype of a resolved precision (``None`` for full fp32)."""
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
