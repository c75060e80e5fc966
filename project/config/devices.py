"""Accelerator names and the devices they stand for: one definition for training, prediction and benchmarks."""

from __future__ import annotations

import os
import re
from typing import Union

import torch

from project.common.errors import UserError

#: ``--accelerator`` choices everywhere (``gpu`` and ``cuda`` are the same thing)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
NO_GPU_MESSAGE = "--accelerator gpu but no CUDA GPU is visible; use --accelerator cpu or auto"


def device_type_for(accelerator: str) -> str:
    """``"cuda"`` or ``"cpu"`` for an ``--accelerator`` value (``auto`` picks CUDA when present)."""
    if accelerator in ("gpu", "cuda"):
        return "cuda"
    if accelerator == "auto" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def _available(device_type: str) -> int:
    """How many devices of ``device_type`` this machine has (CPU: cores)."""
    return torch.cuda.device_count() if device_type == "cuda" else os.cpu_count() or 1


def parse_devices(value: str, device_type: str):
    """``--devices`` as Lightning takes it (``"auto"``, a count, or a list), checked against what is there."""
    available = _available(device_type)
    if device_type == "cuda" and available == 0:
        raise UserError(NO_GPU_MESSAGE)
    if value == "auto":
        return "auto"
    if re.fullmatch(r"-?\d+", value):
        devices = int(value)
        if devices == 0 or devices < -1:
            raise UserError(f"--devices must be a positive number, a list, -1 or auto (got {value})")
        wanted = devices
    elif re.fullmatch(r"\d+(,\d+)*,?", value):
        devices = [int(v) for v in value.split(",") if v]
        wanted = len(devices)
    else:
        raise UserError(f"--devices {value!r} is not a number, a comma-separated list or auto")
    if wanted > available:
        raise UserError(f"--devices {value} asks for more {device_type.upper()} devices than the {available} "
                        f"available")
    return devices


def process_count(devices, num_nodes: int, device_type: str) -> int:
    """How many processes Lightning starts for ``devices`` (as :func:`parse_devices` returns it) on each node."""
    if devices == "auto":  # Lightning: every GPU, or one CPU process
        per_node = _available(device_type) if device_type == "cuda" else 1
    elif devices == -1:
        per_node = _available(device_type)
    else:
        per_node = len(devices) if isinstance(devices, list) else devices
    return per_node * num_nodes


def lightning_accelerator(accelerator: str) -> str:
    """The name Lightning's Trainer takes (it knows ``gpu``, not ``cuda``)."""
    return "gpu" if accelerator == "cuda" else accelerator


def resolve_device(name: Union[str, torch.device, None]) -> torch.device:
    """An ``--accelerator`` value (or any ``torch.device`` string such as ``cuda:1``) as a usable device."""
    if isinstance(name, torch.device):
        device = name
    elif name in (None, *ACCELERATORS):
        device = torch.device(device_type_for(name or "auto"))
    else:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise UserError(f"unknown device {name!r}: use cpu, gpu or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(NO_GPU_MESSAGE)
    return device


def machine_name() -> str:
    """The CPU this runs on, as ``lscpu`` names it (``/proc/cpuinfo`` on Linux; the platform's word elsewhere), and
    the GPU when there is one: what a measured figure names beside it."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f" + {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}{gpu}"
