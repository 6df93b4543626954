"""Check lite3r's DA3 against the official ByteDance-Seed/Depth-Anything-3 implementation.

Builds the official ``DepthAnything3Net`` from its ``da3-large.yaml`` (for ``da3-tiny`` with the preset's sizes
merged into that config and the ViT-L constructor replaced by one of the preset's size, inside this script
only), perturbs its seeded weights (see ``_official.perturb_``), loads the official state dict into ours with
strict=True, and runs the same images through both in float32 on the CPU: the official network gets the
ImageNet-normalised images its input processor would give it, ours the [0, 1] images. Prints, per output, the
largest absolute error and that error relative to the output's largest magnitude, and which reference view the
official code selected.

The official code is imported from --official-root (the ``src`` folder of a checkout; it needs torch, omegaconf,
addict and einops, which lite3r does not: e.g. ``pip install --target /tmp/da3deps addict einops`` and
``--deps /tmp/da3deps``).

    python scripts/compare_official_da3.py --model da3-tiny --batch 2 --frames 4 --height 56 --width 70 \\
        --seed 7 --save-fixture tests/fixtures/da3_tiny_official.safetensors
    python scripts/compare_official_da3.py --model da3-large --frames 3 --height 224 --width 280
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from unittest import mock

import torch

from _official import adopt_official_weights, report, run_both, save_fixture
from lite3r.models import DA3Config, DepthAnything3
from lite3r.models._base import ImageNormalization
from lite3r.models._registry import get_preset
from lite3r.models.da3 import REFERENCE_VIEW_STRATEGIES

OUTPUT_KEYS = ("depth", "depth_conf", "extrinsics", "intrinsics")
CONFIG = "depth_anything_3/configs/da3-large.yaml"


def build_official(config: DA3Config, official_root: str) -> torch.nn.Module:
    """The official ``DepthAnything3Net`` with ``config``'s sizes (the unchanged yaml for DA3-Large)."""
    from omegaconf import OmegaConf

    from depth_anything_3.cfg import create_object, load_config

    yaml = load_config(f"{official_root}/{CONFIG}")
    c = config
    if c == DA3Config():
        return create_object(yaml)
    overrides = {
        "net": {"out_layers": list(c.out_layers), "alt_start": c.alt_start, "qknorm_start": c.qknorm_start,
                "rope_start": c.rope_start},
        "head": {"dim_in": 2 * c.embed_dim, "features": c.head_features, "out_channels": list(c.head_out_channels)},
        "cam_enc": {"dim_out": c.embed_dim, "trunk_depth": c.cam_enc_depth, "num_heads": c.cam_enc_num_heads},
        "cam_dec": {"dim_in": 2 * c.embed_dim},
    }
    with _official_vit_size(c):
        return create_object(OmegaConf.merge(yaml, overrides))


@contextlib.contextmanager
def _official_vit_size(c: DA3Config):
    """Makes the official ``DinoV2`` wrapper's ``vit_large`` build a ViT of ``c``'s size and image size."""
    import depth_anything_3.model.dinov2.dinov2 as official_dinov2
    from depth_anything_3.model.dinov2.vision_transformer import DinoVisionTransformer

    def vit(img_size, **kwargs):  # the wrapper passes img_size=518, patch_size=14 and the alternation options
        return DinoVisionTransformer(
            img_size=c.img_size, embed_dim=c.embed_dim, depth=c.depth, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio,
            **kwargs,
        )

    with mock.patch.object(official_dinov2, "vit_large", vit):
        yield


@contextlib.contextmanager
def _recording_reference_views(selected: list):
    """Records the reference view the official backbone selects (it selects one only for >= 3 views)."""
    import depth_anything_3.model.dinov2.vision_transformer as official_vit

    original = official_vit.select_reference_view

    def select(x, strategy="saddle_balanced"):
        index = original(x, strategy=strategy)
        selected.append(index.tolist())
        return index

    with mock.patch.object(official_vit, "select_reference_view", select):
        yield


def compare(
    model_name: str, official_root: str, batch: int, frames: int, height: int, width: int, seed: int, strategy: str
):
    """Returns (official state dict, images, official outputs, our outputs)."""
    _, config = get_preset(model_name, ref_view_strategy=strategy)
    torch.manual_seed(seed)
    official = build_official(config.replace(ref_view_strategy="saddle_balanced"), official_root)
    state_dict, ours = adopt_official_weights(official, DepthAnything3, config, seed, model_name)
    images = torch.rand(batch, frames, 3, height, width, generator=torch.Generator().manual_seed(seed + 1))
    selected = []
    with _recording_reference_views(selected):
        reference, mine = run_both(
            lambda: official(ImageNormalization()(images), ref_view_strategy=strategy), lambda: ours(images), images
        )
    print(f"official reference view per scene: {selected[0] if selected else 'none selected (< 3 views)'}; "
          f"official output keys: {sorted(k for k, v in reference.items() if isinstance(v, torch.Tensor))}")
    return state_dict, images, {k: reference[k] for k in OUTPUT_KEYS}, mine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="da3-tiny", help="lite3r preset (default: da3-tiny)")
    parser.add_argument("--official-root", default="/tmp/da3src/src",
                        help="directory that contains the official `depth_anything_3` package")
    parser.add_argument("--deps", default="/tmp/da3deps", help="extra import path for the official code's deps")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--height", type=int, default=112)
    parser.add_argument("--width", type=int, default=112)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ref-view-strategy", default="saddle_balanced", choices=REFERENCE_VIEW_STRATEGIES)
    parser.add_argument("--tolerance", type=float, default=1e-4, help="fail above this relative error")
    parser.add_argument("--save-fixture", metavar="PATH", help="write weights, input and official outputs")
    args = parser.parse_args()

    sys.path[:0] = [args.official_root, args.deps]
    state_dict, images, reference, mine = compare(
        args.model, args.official_root, args.batch, args.frames, args.height, args.width, args.seed,
        args.ref_view_strategy,
    )
    worst = report(reference, mine, OUTPUT_KEYS)
    if args.save_fixture:
        metadata = {"preset": args.model, "seed": str(args.seed), "generator": "scripts/compare_official_da3.py",
                    "reference": "ByteDance-Seed/Depth-Anything-3 (official code), float32, CPU"}
        save_fixture(args.save_fixture, state_dict, images, reference, metadata)
    if worst > args.tolerance:
        raise SystemExit(f"FAIL: worst relative error {worst:.3g} > {args.tolerance:g}")
    print(f"OK: worst relative error {worst:.3g} <= {args.tolerance:g}")


if __name__ == "__main__":
    main()
