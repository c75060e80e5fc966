"""The precision policy: which numeric precision a run trains in and computes its features in, and why.

bf16 autocast speeds VGG16 up on CPUs with AVX-512-bf16 or AMX, but on a CPU without them it is emulated and far
*slower* than fp32. So ``auto`` never picks bf16 blindly: it asks the CPU (or GPU) what it supports. On an x86 CPU
without AMX, ``auto`` computes the features in int8 where it can (faster cache builds than fp32 with AVX2 kernels and
than bf16 with AVX-512-bf16 and VNNI, at the same accuracy; measured: docs/training.md, "Precision and int8 features")
and trains the heads in the CPU's native precision (fp32, or bf16 where the CPU has it). With AMX, bf16 features are
nearly as fast as int8 and closer to fp32, so they stay. Other CPUs (ARM) keep fp32 features: int8 was not measured
there. A resumed run keeps the features it was trained on; a re-tested int8 run uses int8 where int8 runs, else the
native precision's features (the heads score the same on fp32 features: docs/results.md, "Accuracy by feature
precision").

:func:`choose_precision` is the whole policy, a pure function of what it is given (the hardware as a
:class:`Hardware` value, so every kind of machine can be tested on any machine); the command line only calls it.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Callable, Optional

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
#: What a run is: a new one, one resumed from its last checkpoint, or a saved checkpoint re-tested.
RUN_KINDS = ("new", "resume", "retest")
INT8_INSTALL_COMMAND = "pip install -e .[onnx]"
_SHORT_NAMES = {"32-true": "fp32", "bf16-mixed": "bf16", "16-mixed": "fp16"}


def cpu_has_amx() -> bool:
    """True when this CPU has AMX tiles (Intel Xeon since Sapphire Rapids), where bf16 runs nearly as fast as int8."""
    return bool(torch.cpu._is_amx_tile_supported())


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 matmuls in hardware (AVX-512-bf16 or AMX)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or cpu_has_amx())


def cpu_is_x86() -> bool:
    """True on x86-64, the CPUs int8 features were measured on."""
    return platform.machine().lower() in ("x86_64", "amd64")


@dataclass(frozen=True)
class Hardware:
    """What the policy needs to know of the device a run computes on; :meth:`of` asks torch for this machine's."""

    #: ``"cpu"`` or ``"cuda"``
    device_type: str
    #: bf16 without emulation: AVX-512-bf16 or AMX on a CPU, bf16 support on a GPU
    native_bf16: bool
    #: AMX tiles (CPU): bf16 features nearly as fast as int8
    amx: bool = False
    #: an x86-64 CPU, where int8 features were measured
    x86: bool = False

    @classmethod
    def of(cls, device_type: str) -> "Hardware":
        if device_type == "cuda":
            return cls("cuda", native_bf16=bool(torch.cuda.is_bf16_supported()))
        return cls("cpu", native_bf16=cpu_has_native_bf16(), amx=cpu_has_amx(), x86=cpu_is_x86())

    @property
    def native_precision(self) -> str:
        """The fastest precision this device runs without emulation (Lightning's name)."""
        if self.device_type == "cuda":
            return "bf16-mixed" if self.native_bf16 else "16-mixed"
        return "bf16-mixed" if self.native_bf16 else "32-true"

    @property
    def prefers_int8_features(self) -> bool:
        """Whether ``auto`` wants int8 features here: an x86 CPU without AMX (with or without AVX-512-bf16)."""
        return self.device_type == "cpu" and self.x86 and not self.amx


@dataclass(frozen=True)
class PrecisionChoice:
    """A run's precisions and why they were chosen."""

    #: the training precision, one of Lightning's names: ``32-true``, ``bf16-mixed`` or ``16-mixed``
    training: str
    #: the precision the feature cache is computed and stored in: ``training``'s, or ``int8``
    features: str
    #: why, in a few words (for logs and tests)
    reason: str
    #: something the user should be told (a faster choice left out, a re-test on other features), or None
    notice: Optional[str] = None


def int8_blocker(device_type: str, processes: int, feature_cache: bool) -> Optional[str]:
    """Why int8 features cannot be computed with these settings (None when they can, the onnx extra aside)."""
    if device_type != "cpu":
        return ("int8 features are computed on the CPU (onnxruntime): add --accelerator cpu, or choose another "
                "--precision")
    if processes != 1:
        return ("int8 features are computed in one process: leave --devices and --num_nodes at their defaults, or "
                "choose another --precision")
    if not feature_cache:
        return "int8 is a precision of the feature cache: drop --no_feature_cache, or choose another --precision"
    return None


#: What one training step of ``--finetune all`` costs per 200 px image: VGG16's conv base forward (12.2 GMAC at
#: 200 px) and backward (twice that), in floating-point operations.
FINETUNE_ALL_GFLOP_PER_IMAGE = 73


def finetune_all_blocker(device_type: str) -> Optional[str]:
    """Why every VGG16 layer cannot be trained here (None on a GPU): on a CPU each epoch would take many hours."""
    if device_type == "cuda":
        return None
    return (f"--finetune all trains every VGG16 layer on every image at every step (about "
            f"{FINETUNE_ALL_GFLOP_PER_IMAGE} GFLOP per 200 px image), hours per epoch on a CPU: it needs a GPU "
            f"(--accelerator gpu); on this machine use --recipe finetune, which trains block 5 above a cache of "
            f"blocks 1-4")


def choose_precision(requested: str, hardware: Hardware, *, run: str = "new", trained_features: Optional[str] = None,
                     processes: int = 1, feature_cache: bool = True,
                     int8_available: Callable[[], bool] = lambda: False) -> PrecisionChoice:
    """The training and feature precisions for ``--precision requested`` on ``hardware``.

    ``run`` is one of :data:`RUN_KINDS`; ``trained_features`` the feature precision a resumed or re-tested run
    records (only a features-only one, ``int8``, is kept; None for none); ``processes`` how many processes the run
    starts; ``int8_available`` says whether the onnx extra is installed (a callable, because answering imports
    onnxruntime: asked only when int8 is in question). A choice of int8 that cannot run here is not refused here:
    :func:`int8_blocker` says why.
    """
    if requested not in CHOICES:
        raise ValueError(f"unknown precision {requested!r}; choose one of {', '.join(CHOICES)}")
    if run not in RUN_KINDS:
        raise ValueError(f"unknown run kind {run!r}; one of {', '.join(RUN_KINDS)}")
    native = hardware.native_precision
    if requested in FEATURE_ONLY:
        return PrecisionChoice(native, requested, f"--precision {requested}: features in {requested}, heads in the "
                                                  f"native precision")
    if requested != "auto":
        return PrecisionChoice(_ALIASES[requested], _ALIASES[requested], f"--precision {requested}")
    trained = trained_features if trained_features in FEATURE_ONLY else None

    def int8_runs_here() -> bool:
        return int8_blocker(hardware.device_type, processes, feature_cache) is None and int8_available()

    if run == "resume" and trained:
        return PrecisionChoice(native, trained, f"a resumed run goes on with the {trained} features it was trained on")
    if run == "retest" and trained:
        if int8_runs_here():
            return PrecisionChoice(native, trained, f"re-tested on the {trained} features it was trained on")
        return PrecisionChoice(native, native, f"trained on {trained} features, which cannot be computed here",
                               notice=f"This run was trained on {trained} features; testing it on {native} features "
                                      f"(int8 runs on the CPU, in one process, with a feature cache and the onnx "
                                      f"extra)")
    if run == "new" and hardware.prefers_int8_features:
        if int8_runs_here():
            return PrecisionChoice(native, "int8", "auto on an x86 CPU without AMX: int8 features, heads in the "
                                                   "native precision")
        notice = None
        if not int8_available():
            notice = (f"Features in {_SHORT_NAMES[native]}: int8 features, much faster on this CPU (no AMX), need "
                      f"the onnx extra: {INT8_INSTALL_COMMAND}")
        return PrecisionChoice(native, native, "auto: int8 features cannot be computed here", notice=notice)
    return PrecisionChoice(native, native, "auto: the device's native precision")


def native_precision(device_type: str) -> str:
    """The fastest precision that this machine's ``device_type`` (``"cpu"`` or ``"cuda"``) runs without emulation."""
    return Hardware.of(device_type).native_precision


def autocast_dtype(precision: str) -> Optional[torch.dtype]:
    """The autocast dtype of a resolved precision (``None`` for full fp32)."""
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
