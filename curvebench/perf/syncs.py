"""Count host syncs in a training step, on any device.

On a GPU a host sync stalls the CPU until the queued kernels finish (``.item()``, ``float(t)``,
``if t:``, ``.cpu()``, boolean-mask indexing, ``nonzero``, a tensor built from host data...).
On the CPU nothing stalls, so the same code would pass unnoticed; this counter flags the *ops that
would sync on a GPU*, so the rule "no host sync in ``train_step``" can be tested on a CPU:

- ``aten._local_scalar_dense`` (``item``, ``float``, ``int``, ``bool``, ``if tensor:``);
- ops whose output shape depends on the data (``nonzero``, ``masked_select``, ``unique``,
  boolean-mask ``index``/``index_put_``, ``repeat_interleave`` without ``output_size``,
  ``bincount``);
- device -> host transfers (``Tensor.cpu``, ``.numpy``, ``.tolist``) and host -> device tensors
  (``torch.tensor``/``as_tensor`` with a ``device``);
- on CUDA, in addition, whatever ``torch.cuda.set_sync_debug_mode`` reports.

Scalars inside ``torch.optim`` are ignored: non-capturable optimisers keep their step counters on
the host, so reading them does not wait for the GPU. Each event is attributed to the innermost
frame outside torch, which is what a method's author needs to find it.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_THIS_FILE = os.path.abspath(__file__)

_DATA_DEPENDENT = {"nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive", "bincount"}
_HOST_METHODS = {"cpu", "numpy", "tolist"}
_HOST_TO_DEVICE = {"tensor", "as_tensor"}


def _bool_index(indices: Any) -> bool:
    return any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in (indices or ()))


def _why(func: Any, args: tuple, kwargs: dict) -> str | None:
    """The reason ``func`` would synchronise with the host on a GPU, or None."""
    name = func.overloadpacket.__name__
    if name == "_local_scalar_dense":
        return "tensor -> Python scalar (item/float/int/bool/if)"
    if name in _DATA_DEPENDENT:
        return f"data-dependent output shape ({name})"
    if name == "repeat_interleave" and len(args) >= 1 and kwargs.get("output_size") is None and \
            func.__name__.startswith("repeat_interleave.Tensor"):
        return "data-dependent output shape (repeat_interleave)"
    if name in ("index", "_unsafe_index") and len(args) > 1 and _bool_index(args[1]):
        return "boolean-mask indexing (nonzero)"
    if name in ("index_put", "index_put_", "_index_put_impl_") and len(args) > 2 and _bool_index(args[1]):
        value = args[2]
        if not (isinstance(value, torch.Tensor) and value.numel() == 1):
            return "boolean-mask assignment (nonzero)"
    return None


def _site() -> tuple[str | None, bool]:
    """(innermost frame outside torch as 'file:line (function)', whether torch.optim is on the way)."""
    frame: Any = sys._getframe(1)
    in_optim = False
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if path.startswith(_TORCH_DIR):
            in_optim = in_optim or path[len(_TORCH_DIR):].startswith("optim" + os.sep)
        elif path != _THIS_FILE:
            rel = os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path
            return f"{rel}:{frame.f_lineno} ({frame.f_code.co_name})", in_optim
        frame = frame.f_back
    return None, in_optim


@dataclass
class SyncReport:
    count: int = 0  # ops that would sync on a GPU (works on any device)
    sites: Counter = field(default_factory=Counter)  # "file:line (fn): reason" -> count
    cuda: int = 0  # syncs CUDA itself reported (set_sync_debug_mode; CUDA runs only)
    cuda_sites: Counter = field(default_factory=Counter)
    ops: int = 0  # ATen ops dispatched (host work per step: what bounds a small net's eager GPU step)

    def add(self, reason: str) -> None:
        site, in_optim = _site()
        if in_optim:
            return
        self.count += 1
        self.sites[f"{site or '<torch internal>'}: {reason}"] += 1

    def summary(self, limit: int = 3) -> str:
        return "; ".join(f"{s} x{n}" for s, n in self.sites.most_common(limit))


class _Dispatch(TorchDispatchMode):
    def __init__(self, report: SyncReport) -> None:
        super().__init__()
        self.report = report

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        self.report.ops += 1
        reason = _why(func, args, kwargs)
        if reason is not None:
            self.report.add(reason)
        return func(*args, **kwargs)


class _Function(TorchFunctionMode):
    def __init__(self, report: SyncReport) -> None:
        super().__init__()
        self.report = report

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _HOST_METHODS and args and isinstance(args[0], torch.Tensor):
            self.report.add(f"device -> host transfer (Tensor.{name})")
        elif name in _HOST_TO_DEVICE and kwargs.get("device") is not None and func in (torch.tensor, torch.as_tensor):
            data = args[0] if args else kwargs.get("data")
            if not isinstance(data, torch.Tensor):
                self.report.add(f"host -> device copy (torch.{name} with device=)")
        return func(*args, **kwargs)


class HostSyncCounter:
    """Context manager: ``with HostSyncCounter(device) as sc: step()``; then ``sc.report``."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.report = SyncReport()
        self._modes: list[Any] = []
        self._warn_ctx: Any = None
        self._caught: list[warnings.WarningMessage] = []
        self._prev_debug: int | None = None

    def __enter__(self) -> "HostSyncCounter":
        if self.device.type == "cuda":
            self._prev_debug = torch.cuda.get_sync_debug_mode()
            self._warn_ctx = warnings.catch_warnings(record=True)
            self._caught = self._warn_ctx.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        self._modes = [_Function(self.report), _Dispatch(self.report)]
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for m in reversed(self._modes):
            m.__exit__(*exc)
        if self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode(self._prev_debug or 0)
            self._warn_ctx.__exit__(*exc)
            for w in self._caught:
                if "synchroniz" in str(w.message):
                    self.report.cuda += 1
                    self.report.cuda_sites[f"{w.filename}:{w.lineno}: {str(w.message)[:80]}"] += 1

    @property
    def count(self) -> int:
        """Syncs seen: the op-level count, or CUDA's own count where that is larger."""
        return max(self.report.count, self.report.cuda)
