"""What the benchmark runs on: a readable device name and the GPU's peak dense half-precision throughput.

MFU (model FLOPs utilisation) divides achieved FLOP/s by the peak of `GPU_PEAK_TFLOPS`:
the vendor's dense (no structured sparsity) BF16/FP16 tensor-core figure with FP32
accumulation, in TFLOP/s. A GPU that is not in the table has no MFU (None).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

# (pattern searched in torch.cuda.get_device_name(), label, dense bf16/fp16 TFLOP/s); first match wins,
# so the more specific names come first.
GPU_PEAK_TFLOPS: tuple[tuple[str, str, float], ...] = (
    (r"H100.*NVL", "H100 NVL", 835.0),
    (r"H100.*PCIe", "H100 PCIe", 756.0),
    (r"H100", "H100 SXM", 989.0),
    (r"H200.*NVL", "H200 NVL", 835.0),
    (r"H200", "H200", 989.0),
    (r"A100", "A100", 312.0),
    (r"L40S", "L40S", 362.0),
    (r"L40\b", "L40", 181.0),
    (r"\bL4\b", "L4", 121.0),
    (r"\bA10\b", "A10", 125.0),
    (r"RTX 4090", "RTX 4090", 165.0),
)


def gpu_peak(device_name: str) -> tuple[str, float] | None:
    """(label, peak dense bf16/fp16 TFLOP/s) of a CUDA device name, or None when it is not in the table."""
    for pattern, label, tflops in GPU_PEAK_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return label, tflops
    return None


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (falls back to the platform's processor string)."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or "unknown CPU"


def device_label(device: torch.device) -> str:
    """e.g. "cuda: NVIDIA H100 80GB HBM3" or "cpu: AMD EPYC (2 threads)"."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {cpu_name()} ({torch.get_num_threads()} threads)"


def device_peak_tflops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Peak TFLOP/s MFU is measured against: CUDA, bf16/fp16 and a known GPU only; else None."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    found = gpu_peak(torch.cuda.get_device_name(device))
    return None if found is None else found[1]
