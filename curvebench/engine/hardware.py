"""The hardware and math-library stack a run was trained on, and how two runs' stacks compare.

Float results are bit-identical only on one hardware and software stack: oneDNN and MKL pick
their kernels by the CPU's instruction-set level (AVX2, AVX-512, AMX), GPUs differ by model and
cuDNN version, and reductions split by the thread count. ``stack_fields`` records what decides
this in every run record's ``env``; ``stack_key`` compares two records (``None`` where a field was
not recorded, as in records written before these fields existed); ``stack_label`` names a stack.
"""

from __future__ import annotations

import functools
import os
import platform
import re
from pathlib import Path
from typing import Any, Mapping

# CPU flags (Linux /proc/cpuinfo names) that decide which oneDNN/MKL kernels run
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
             "amx_int8", "asimd", "sve")
# environment variables that cap or force the kernels' instruction set
ISA_ENV_VARS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS",
                "MKL_CBWR")

# env fields that make a stack, in label order; CUDA fields only count for GPU runs
CPU_KEY_FIELDS = ("device", "cpu_model", "cpu_isa", "cpu_amx", "isa_env", "torch", "mkl", "onednn", "numpy_blas",
                  "torch_threads")
GPU_KEY_FIELDS = ("device_name", "gpu_capability", "cuda", "cudnn")

# JSON-schema types of the fields (all optional: older records lack them)
ENV_SCHEMA_PROPERTIES: dict[str, Any] = {
    "arch": {"type": ["string", "null"]},
    "cpu_model": {"type": ["string", "null"]},
    "cpu_isa": {"type": ["string", "null"], "description": "torch.backends.cpu.get_cpu_capability()"},
    "cpu_amx": {"type": ["boolean", "null"]},
    "cpu_features": {"type": ["array", "null"], "items": {"type": "string"}},
    "isa_env": {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
    "mkl": {"type": ["string", "null"]},
    "onednn": {"type": ["string", "null"]},
    "numpy_blas": {"type": ["string", "null"]},
    "torch_threads": {"type": ["integer", "null"]},
    "gpu_capability": {"type": ["string", "null"]},
}


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str | None, set[str] | None]:
    """(model name, flags) of the first CPU in ``path``; (None, None) where there is no such file."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None, None
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and model is None:
            model = value.strip() or None
        elif key in ("flags", "features") and flags is None:
            flags = set(value.split())
        if model is not None and flags is not None:
            break
    return model, flags


def parse_torch_config(text: str) -> dict[str, str | None]:
    """MKL and oneDNN versions from ``torch.__config__.show()``."""
    mkl = re.search(r"Math Kernel Library Version ([0-9][0-9.]*)", text)
    build = re.search(r"Math Kernel Library Version .*?Build (\d+)", text)
    dnn = re.search(r"(?:MKL-DNN|oneDNN) v([0-9][\w.]*)(?: \(Git Hash ([0-9a-f]+)\))?", text)
    return {
        "mkl": (mkl.group(1) + (f" (build {build.group(1)})" if build else "")) if mkl else None,
        "onednn": (dnn.group(1) + (f" ({dnn.group(2)[:8]})" if dnn.group(2) else "")) if dnn else None,
    }


def _numpy_blas() -> str | None:
    import numpy

    try:
        deps = numpy.show_config(mode="dicts")["Build Dependencies"]  # numpy >= 1.26
        blas = deps.get("blas") or {}
        return " ".join(str(blas[k]) for k in ("name", "version") if blas.get(k)) or None
    except Exception:  # older numpy, or an unexpected layout: not worth a failed run
        return None


@functools.lru_cache(maxsize=1)
def _static_fields() -> dict[str, Any]:
    """What cannot change within a process: CPU, instruction set, library versions."""
    import torch

    model, flags = _cpuinfo()
    fields: dict[str, Any] = {
        "arch": platform.machine() or None,
        "cpu_model": model or platform.processor() or None,
        "cpu_isa": torch.backends.cpu.get_cpu_capability(),
        "cpu_amx": None if flags is None else "amx_tile" in flags,
        "cpu_features": None if flags is None else [f for f in ISA_FLAGS if f in flags],
        "numpy_blas": _numpy_blas(),
    }
    fields.update(parse_torch_config(torch.__config__.show()))
    return fields


def stack_fields(device: str) -> dict[str, Any]:
    """The fields of ``env`` that describe the hardware and math libraries of a run on ``device``."""
    import torch

    fields = dict(_static_fields())
    fields["isa_env"] = {k: os.environ[k] for k in ISA_ENV_VARS if os.environ.get(k)} or None
    fields["torch_threads"] = torch.get_num_threads()
    fields["gpu_capability"] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(torch.device(device))
        fields["gpu_capability"] = f"{major}.{minor}"
    return fields


def is_gpu(env: Mapping[str, Any]) -> bool:
    return str(env.get("device") or "").startswith("cuda")


def stack_key(env: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The stack of a record's ``env`` as comparable (field, value) pairs; None: not recorded.

    Records from before these fields existed give ``cpu_isa`` None and so never equal a record
    that has them; ``device_name`` (the processor name, e.g. "x86_64", or the GPU) stands in for
    the CPU model there.
    """
    env = dict(env)
    if "cpu_isa" not in env and not is_gpu(env):
        env.setdefault("cpu_model", env.get("device_name"))
    fields = CPU_KEY_FIELDS + (GPU_KEY_FIELDS if is_gpu(env) else ())
    key = []
    for name in fields:
        value = env.get(name)
        if isinstance(value, dict):
            value = tuple(sorted(value.items()))
        elif isinstance(value, list):
            value = tuple(value)
        if name == "device" and isinstance(value, str):
            value = value.split(":")[0]  # cuda:1 and cuda:0 are the same kind of device
        key.append((name, value))
    return tuple(key)


def stack_label(env: Mapping[str, Any]) -> str:
    """A one-line name of the stack: parts joined by " · ", one per ``stack_key`` field (builds left out)."""
    key = dict(stack_key(env))
    parts = [str(key["device"] or "?")]
    if is_gpu(env):
        parts.append(f"{key['device_name'] or '?'}" + (f" (sm {key['gpu_capability']})" if key["gpu_capability"] else ""))
        parts.append(f"CUDA {key['cuda'] or '?'}, cuDNN {key['cudnn'] or '?'}")
    if key["cpu_isa"] is None:  # a record from before these fields
        parts.append(f"{key['cpu_model']} · ISA not recorded" if key["cpu_model"] else "CPU not recorded")
    else:
        parts.append(str(key["cpu_model"] or "unknown CPU"))
        parts.append(key["cpu_isa"] + {True: "+AMX", False: "", None: " (AMX unknown)"}[key["cpu_amx"]])
    if key["isa_env"]:
        parts.append(" ".join(f"{k}={v}" for k, v in key["isa_env"]))
    parts.append(f"torch {key['torch'] or '?'}")
    if key["cpu_isa"] is not None:  # recorded together with the ISA
        parts += [f"MKL {_version(key['mkl'])}", f"oneDNN {_version(key['onednn'])}",
                  f"numpy BLAS {key['numpy_blas'] or '?'}"]
    if key["torch_threads"] is not None:
        parts.append(f"{key['torch_threads']} thread" + ("s" if key["torch_threads"] != 1 else ""))
    return " · ".join(parts)


def _version(text: str | None) -> str:
    """ "2024.2 (build 20240605)" -> "2024.2": the label names versions, the record keeps builds."""
    return text.split(" (")[0] if text else "none"


def stack_differences(recorded: Mapping[str, Any], here: Mapping[str, Any]) -> list[str]:
    """The fields in which two stacks differ, as "field a → b" ("not recorded" for None)."""
    a, b = dict(stack_key(recorded)), dict(stack_key(here))
    out = []
    for name in dict.fromkeys([*a, *b]):
        va, vb = a.get(name), b.get(name)
        if va != vb:
            out.append(f"{name} {_show(va)} → {_show(vb)}")
    return out


def _show(value: Any) -> str:
    if value is None:
        return "not recorded"
    if isinstance(value, tuple):  # isa_env: ((name, value), ...)
        return " ".join(f"{k}={v}" for k, v in value) or "none"
    return str(value)
