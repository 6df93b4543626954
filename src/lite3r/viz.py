"""Contact sheet: one row per view with the image, the predicted depth, its confidence and, when the scene has
it, the ground-truth depth; a colour bar under each map column says what the colours mean."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def contact_sheet(
    path: str | Path,
    images: np.ndarray,
    depth: np.ndarray,
    depth_conf: np.ndarray,
    max_views: int = 12,
    true_depth: np.ndarray | None = None,
) -> Path:
    """Save a PNG; ``images [S,3,H,W]`` in [0,1], ``depth``/``depth_conf``/``true_depth`` ``[S,H,W]``.

    Depth (predicted and true) shares one colour range across views (2nd–98th percentile of both) so
    views and columns compare at a glance. At most ``max_views`` rows are drawn; the title says when views were
    left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    total = len(images)
    n = min(total, max_views)
    both = depth[:n].ravel()
    if true_depth is not None:
        both = np.concatenate([both, true_depth[:n][true_depth[:n] > 0]])
    lo, hi = np.percentile(both, [2, 98])
    columns = 3 + (true_depth is not None)
    fig, grid = plt.subplots(n + 1, columns, figsize=(3 * columns, 3 * n + 1.2), squeeze=False,
                             gridspec_kw={"height_ratios": [1] * n + [0.08]})  # fmt: skip
    axes, bars = grid[:n], grid[n]
    shown = {}
    for i in range(n):
        panels = [
            (np.clip(images[i].transpose(1, 2, 0), 0, 1), {}, f"view {i}"),
            (depth[i], {"cmap": "turbo", "vmin": lo, "vmax": hi}, "depth"),
            (depth_conf[i], {"cmap": "magma", "vmin": depth_conf[:n].min(), "vmax": depth_conf[:n].max()},
             "confidence"),
        ]  # fmt: skip
        if true_depth is not None:  # invalid (0) pixels stay blank
            masked = np.ma.masked_where(true_depth[i] <= 0, true_depth[i])
            panels.append((masked, {"cmap": "turbo", "vmin": lo, "vmax": hi}, "true depth"))
        for column, (ax, (img, kw, title)) in enumerate(zip(axes[i], panels)):
            shown[column] = ax.imshow(img, **kw)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    bars[0].axis("off")
    for column in range(1, columns):
        fig.colorbar(shown[column], cax=bars[column], orientation="horizontal")
        bars[column].set_xlabel(("depth", "confidence", "true depth")[column - 1], fontsize=9)
    if n < total:
        fig.suptitle(f"first {n} of {total} views", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)
