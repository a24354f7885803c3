"""CurveNet, the package's own method (Jiang et al., AAAI 2022): probe (``probe``), curves
(``curves``), the curve-perception network (``network``), the meta step (``meta_step``), timing
(``timing``) and the ``Method`` classes ``curvenet`` / ``curvenet_drw`` (``method``)."""

from curvenet.method.method import CurveNetDRW, CurveNetMethod

__all__ = ["CurveNetDRW", "CurveNetMethod"]
