"""Config groups Hydra searches after curvebench/conf (the ``curvebench.conf`` entry point)."""
