"""Contact sheet: one row per view with the image, the predicted depth and its confidence."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def contact_sheet(
    path: str | Path,
    images: np.ndarray,
    depth: np.ndarray,
    depth_conf: np.ndarray,
    max_views: int = 12,
) -> Path:
    """Save a PNG; ``images [S,3,H,W]`` in [0,1], ``depth``/``depth_conf`` ``[S,H,W]``.

    Depth is shown with one colour range across views (2nd–98th percentile) so views compare at a glance.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(len(images), max_views)
    lo, hi = np.percentile(depth[:n], [2, 98])
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
    for i in range(n):
        panels = (
            (np.clip(images[i].transpose(1, 2, 0), 0, 1), {}, f"view {i}"),
            (depth[i], {"cmap": "turbo", "vmin": lo, "vmax": hi}, "depth"),
            (depth_conf[i], {"cmap": "magma"}, "confidence"),
        )
        for ax, (img, kw, title) in zip(axes[i], panels):
            ax.imshow(img, **kw)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)
