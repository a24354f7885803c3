"""Fast paths behind the ``train:`` flags of the run config (PERFORMANCE.md §5). Each one defaults to the
behaviour the engine had before it existed, except TF32, which was already on.

- ``train.tf32``: TF32 convolutions and matmuls (Ampere+ GPUs); applied for every run and every
  benchmark through :func:`apply_backend_flags`.
- ``train.channels_last``: NHWC models and batches (``TrainContext.build_model`` and ``ImageSet``).
- ``train.compile`` / ``train.compile_backend``: ``torch.compile`` the network built by
  ``TrainContext.build_model`` (in place, ``nn.Module.compile``: state-dict keys do not change).
- ``train.cuda_graphs``: CUDA graphs through ``torch.compile(mode="reduce-overhead")``; needs CUDA.
- ``train.bf16``: bf16 autocast around ``train_step`` (evaluation stays fp32).
- ``train.compile_meta``: the meta step (MW-Net, CurveNet, Dynamic Loss) as one compiled pure function
  (``engine/meta_step.py``), instead of the eager passes described below.

Meta-learning passes (``engine/virtual.py``) differentiate twice, which ``torch.compile`` and
CUDA-graph replay cannot be trusted with (AOTAutograd has refused double backward, or got it wrong,
depending on the version: PERFORMANCE.md §9.2; a replayed graph would ignore substituted
parameters). ``FunctionalModel`` therefore runs those passes eagerly and in fp32
(:func:`eager_fp32`), while the method's real step keeps the compiled model: a meta method with
``train.compile=true`` falls back to eager for its meta step instead of failing. "fp32" includes
TF32: :func:`no_tf32` turns TF32 matmuls and convolutions off for the functional forwards, the
virtual step's gradient and the meta backward (``train.tf32`` applies to the real steps only).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping

import torch
import torch.nn as nn

from curvebench.errors import ConfigError

COMPILED_ATTR = "_curvebench_compiled"  # set on a model compiled by prepare_model


def train_setting(train: Mapping[str, Any] | Any, key: str, default: Any) -> Any:
    """``train.<key>`` from a DictConfig, a dict or an attribute object, else ``default``."""
    try:
        value = train.get(key, default)  # DictConfig and dict
    except AttributeError:
        value = getattr(train, key, default)
    return default if value is None else value


def apply_backend_flags(train: Mapping[str, Any], device: torch.device) -> None:
    """TF32 and cuDNN autotuning, from ``train.tf32`` and ``train.deterministic``.

    The flags are process-wide and harmless without a GPU, so they are set whatever the device.
    """
    tf32 = bool(train_setting(train, "tf32", True))
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = device.type == "cuda" and not bool(train_setting(train, "deterministic", False))


def check_flags(train: Mapping[str, Any], device: torch.device) -> None:
    """Reject flag combinations that cannot run, saying what to change."""
    if bool(train_setting(train, "cuda_graphs", False)) and device.type != "cuda":
        raise ConfigError(f"train.cuda_graphs=true needs a CUDA device, but the run is on {device}; "
                          "set train.cuda_graphs=false (or train.compile=true for a compiled CPU path)")
    backend = str(train_setting(train, "compile_backend", "inductor"))
    if bool(train_setting(train, "cuda_graphs", False)) and backend != "inductor":
        raise ConfigError(f"train.cuda_graphs=true uses torch.compile(mode='reduce-overhead'), which needs "
                          f"train.compile_backend=inductor, not {backend!r}")


def compile_settings(train: Mapping[str, Any]) -> dict[str, Any] | None:
    """Keyword arguments for ``torch.compile``, or None when neither compile nor CUDA graphs is on."""
    graphs = bool(train_setting(train, "cuda_graphs", False))
    if not (graphs or bool(train_setting(train, "compile", False))):
        return None
    settings: dict[str, Any] = {"backend": str(train_setting(train, "compile_backend", "inductor"))}
    if graphs:
        settings["mode"] = "reduce-overhead"  # inductor + CUDA graph trees (one graph per input shape)
    return settings


def prepare_model(model: nn.Module, train: Mapping[str, Any], device: torch.device) -> nn.Module:
    """Apply ``channels_last`` and ``compile``/``cuda_graphs`` to a freshly built model (in place)."""
    if bool(train_setting(train, "channels_last", False)):
        model = model.to(memory_format=torch.channels_last)
    settings = compile_settings(train)
    if settings is not None:
        check_flags(train, device)
        model.compile(**settings)
        setattr(model, COMPILED_ATTR, True)
    return model


def is_compiled(model: nn.Module) -> bool:
    return bool(getattr(model, COMPILED_ATTR, False)) or getattr(model, "_compiled_call_impl", None) is not None


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type without autocast (e.g. meta)
        return False


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """TF32 off for matmuls and cuDNN convolutions inside the block; the previous flags are restored on
    exit, also after an exception. Only the two flags that :func:`apply_backend_flags` sets are used
    (torch refuses to read the precision back once its legacy and new APIs are mixed). The flags are
    process-wide, so this affects every thread while it is entered."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def fp32(device_type: str) -> Iterator[None]:
    """Neither autocast nor TF32 (:func:`no_tf32`) inside the block: the meta passes' precision,
    eager (:func:`eager_fp32`) or compiled (``engine/meta_step.py``)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(no_tf32())
        if _autocast_enabled(device_type):
            stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


@contextlib.contextmanager
def eager_fp32(model: nn.Module, device_type: str) -> Iterator[None]:
    """Run ``model`` eagerly (ignoring its torch.compile / CUDA-graph wrapper) in :func:`fp32`.

    Used by the meta-learning passes of ``engine/virtual.py``: double backward cannot go through a
    compiled graph, and the hypergradients (lr x second-order products) stay in fp32.
    """
    with contextlib.ExitStack() as stack:
        if is_compiled(model):
            stack.enter_context(torch.compiler.set_stance("force_eager"))
        stack.enter_context(fp32(device_type))
        yield


def train_autocast(train: Mapping[str, Any], device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast for the training step when ``train.bf16`` is on, else a no-op context."""
    if bool(train_setting(train, "bf16", False)):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
