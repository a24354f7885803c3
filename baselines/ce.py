"""Cross-entropy on the observed labels: the harness's reference method."""

from __future__ import annotations

from curvebench.engine.method import Method, register_method
from curvebench.engine.method_config import MethodConfig


@register_method("ce")
class CrossEntropy(Method):
    """Plain CE with the recipe's optimiser and schedule (docs/methods.md §3). The base class already
    implements it; this class gives it its registry name. It has no hyper-parameter."""

    config_class = MethodConfig
