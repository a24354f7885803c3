"""CurveNet (Jiang et al., AAAI 2022), a method of the benchmark and a peer of ``baselines``:
the probing schedule (``probe``), loss curves (``curves``), the curve-perception network
(``network``), its meta step (``meta_step``) and the ``Method`` classes ``curvenet`` /
``curvenet_drw`` (``method``). It imports the harness (``curvebench``); the harness never imports it
except through the method list."""

from curvenet.method import CurveNetDRW, CurveNetMethod

__all__ = ["CurveNetDRW", "CurveNetMethod"]
