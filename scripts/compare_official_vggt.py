"""Check lite3r's VGGT against the official facebookresearch/vggt implementation.

Builds the official model and ours with the same seeded weights (the official state dict is loaded into ours
with strict=True), runs the same images through both in float32 on the CPU and prints, per output, the largest
absolute error and that error relative to the output's largest magnitude.

The official code is imported from --official-root (a checkout holding the ``vggt`` package; it needs torch,
huggingface_hub and einops). For presets other than "vggt" the official constructors are given the preset's
sizes by patching them inside this script only (DINOv2 ViT-L -> a ViT of the preset's size, heads' sizes).

The checkpoint's LayerScale gammas are redrawn from U(0.1, 0.5) and every other tensor gets N(0, 0.02) noise,
so that no branch hides behind a near-zero initial scale (VGGT initialises LayerScale at 0.01 and the special
tokens at 1e-6).

    python scripts/compare_official_vggt.py --model vggt-tiny --frames 3 --height 56 --width 70 \\
        --save-fixture tests/fixtures/vggt_tiny_official.safetensors
    python scripts/compare_official_vggt.py --model vggt --frames 2 --height 224 --width 224
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from functools import partial
from unittest import mock

import torch

from _official import adopt_official_weights, report, run_both, save_fixture
from lite3r.models import VGGT, VGGTConfig
from lite3r.models._registry import get_preset

OUTPUT_KEYS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")


def build_official(config: VGGTConfig) -> torch.nn.Module:
    """The official ``VGGT`` with ``config``'s sizes (unpatched ``VGGT()`` for the VGGT-1B config)."""
    from vggt.models.vggt import VGGT as OfficialVGGT

    if config == VGGTConfig():
        return OfficialVGGT()
    with _official_sizes(config):
        return OfficialVGGT(img_size=config.img_size, patch_size=config.patch_size, embed_dim=config.embed_dim)


@contextlib.contextmanager
def _official_sizes(c: VGGTConfig):
    """Temporarily binds ``c``'s sizes into the constructors the official ``VGGT.__init__`` calls."""
    import vggt.heads.track_head as official_track
    import vggt.models.aggregator as official_aggregator
    import vggt.models.vggt as official_vggt
    from vggt.heads.camera_head import CameraHead
    from vggt.heads.dpt_head import DPTHead
    from vggt.heads.track_head import TrackHead
    from vggt.heads.track_modules.base_track_predictor import BaseTrackerPredictor
    from vggt.layers.attention import MemEffAttention
    from vggt.layers.block import Block
    from vggt.layers.vision_transformer import DinoVisionTransformer

    def dinov2(**kwargs):  # stands in for vit_large(...), which fixes the ViT-L sizes
        block = partial(Block, attn_class=MemEffAttention)
        return DinoVisionTransformer(
            embed_dim=c.embed_dim, depth=c.dinov2_depth, num_heads=c.dinov2_num_heads, mlp_ratio=c.mlp_ratio,
            block_fn=block, **kwargs,
        )

    dpt = partial(DPTHead, features=c.dpt_features, out_channels=list(c.dpt_out_channels),
                  intermediate_layer_idx=list(c.dpt_layers))
    replacements = [
        (official_aggregator, "vit_large", dinov2),
        (official_vggt, "Aggregator", partial(
            official_aggregator.Aggregator, depth=c.depth, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio,
            num_register_tokens=c.num_register_tokens, rope_freq=c.rope_freq, init_values=c.init_values)),
        (official_vggt, "CameraHead", partial(
            CameraHead, trunk_depth=c.camera_trunk_depth, num_heads=c.camera_num_heads, mlp_ratio=c.mlp_ratio,
            init_values=c.init_values)),
        (official_vggt, "DPTHead", dpt),
        (official_vggt, "TrackHead", partial(TrackHead, features=c.track_features, hidden_size=c.track_hidden_size)),
        (official_track, "DPTHead", dpt),  # TrackHead passes its own features=, which overrides dpt's
        (official_track, "BaseTrackerPredictor", partial(BaseTrackerPredictor, depth=c.track_depth)),
    ]
    with contextlib.ExitStack() as stack:
        for module, name, replacement in replacements:
            stack.enter_context(mock.patch.object(module, name, replacement))
        yield


def compare(model_name: str, batch: int, frames: int, height: int, width: int, seed: int):
    """Returns (official state dict, images, official outputs, our outputs)."""
    _, config = get_preset(model_name)
    torch.manual_seed(seed)
    official = build_official(config)
    state_dict, ours = adopt_official_weights(official, VGGT, config, seed, model_name)
    images = torch.rand(batch, frames, 3, height, width, generator=torch.Generator().manual_seed(seed + 1))
    reference, mine = run_both(lambda: official(images), lambda: ours(images), images)
    return state_dict, images, {k: reference[k] for k in OUTPUT_KEYS}, mine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vggt-tiny", help="lite3r preset (default: vggt-tiny)")
    parser.add_argument("--official-root", default="/work/ref/model_VGGT/Original",
                        help="directory that contains the official `vggt` package")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--height", type=int, default=112)
    parser.add_argument("--width", type=int, default=112)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-4, help="fail above this relative error")
    parser.add_argument("--save-fixture", metavar="PATH", help="write weights, input and official outputs")
    args = parser.parse_args()

    sys.path.insert(0, args.official_root)
    state_dict, images, reference, mine = compare(
        args.model, args.batch, args.frames, args.height, args.width, args.seed
    )
    worst = report(reference, mine, OUTPUT_KEYS)
    if args.save_fixture:
        metadata = {"preset": args.model, "seed": str(args.seed), "generator": "scripts/compare_official_vggt.py",
                    "reference": "facebookresearch/vggt (official code), float32, CPU"}
        save_fixture(args.save_fixture, state_dict, images, reference, metadata)
    if worst > args.tolerance:
        raise SystemExit(f"FAIL: worst relative error {worst:.3g} > {args.tolerance:g}")
    print(f"OK: worst relative error {worst:.3g} <= {args.tolerance:g}")


if __name__ == "__main__":
    main()
