"""Model inputs: image folders with the official VGGT preprocessing, and synthetic scenes with ground truth."""

from __future__ import annotations

from lite3r.data.images import ImageLoadError, list_images, load_images
from lite3r.data.synthetic import Scene, SyntheticScenes, make_scene

__all__ = ["ImageLoadError", "Scene", "SyntheticScenes", "list_images", "load_images", "make_scene"]
