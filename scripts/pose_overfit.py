"""Can the teacher objective teach camera poses at all? Overfit a VGGT preset on a few fixed scenes.

The first trained teacher learned depth but predicted the mean camera pose (docs/train.md). This separates
"the objective, targets or camera head cannot learn poses" from "not enough training": it trains on ``--scenes``
fixed synthetic scenes (views shuffled every step, as teacher training draws them, so the reference view
changes) with the teacher's loss and optimiser settings, and prints the pose errors on those same scenes every
``--every`` steps, beside those of predicting the identity for every camera. Runs on the CPU in minutes.

    python scripts/pose_overfit.py --model vggt-small --size 112 --steps 300
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import lite3r
from lite3r.data.synthetic import SyntheticScenes
from lite3r.geometry import extri_intri_to_pose_encoding
from lite3r.train.evaluate import evaluate, predict
from lite3r.train.losses import LossConfig, normalize_scene, vggt_loss

POSE_METRICS = ("rotation_error_deg", "translation_error_deg", "camera_center_error")


def identity_errors(model: torch.nn.Module, scenes: list) -> dict[str, float]:
    """Pose errors of predicting the identity for every camera (depth from the model, unused)."""
    predictions = predict(model, scenes, bf16=False)
    for prediction, scene in zip(predictions, scenes):
        views, size = scene.images.shape[0], tuple(scene.images.shape[-2:])
        prediction["pose_enc"] = extri_intri_to_pose_encoding(torch.eye(3, 4).expand(views, 3, 4), scene.intrinsics,
                                                              size)[None].numpy()  # fmt: skip
    return {k: v for k, v in evaluate(predictions, scenes).items() if k in POSE_METRICS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vggt-small")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7, help="scene family (not the teacher's training family 0)")
    args = parser.parse_args()

    torch.manual_seed(0)
    scenes = list(SyntheticScenes(args.scenes, args.views, args.size, args.size, seed=args.seed))
    model = lite3r.load_model(args.model, pretrained=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
    loss_config = LossConfig()
    images, extrinsics, intrinsics, depth = (
        torch.stack([getattr(s, name) for s in scenes]) for name in ("images", "extrinsics", "intrinsics", "depth")
    )
    print(json.dumps({"identity": identity_errors(model, scenes)}))
    generator = torch.Generator().manual_seed(0)
    batch = torch.arange(args.scenes)[:, None]
    start = time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.every == 0 or step == args.steps:
            metrics = evaluate(predict(model, scenes, bf16=False), scenes)
            print(json.dumps({"step": step, "seconds": round(time.perf_counter() - start), **metrics}), flush=True)
        if step == args.steps:
            break
        order = torch.rand(args.scenes, args.views, generator=generator).argsort(dim=-1)
        targets = normalize_scene(extrinsics[batch, order], intrinsics[batch, order], depth[batch, order],
                                  depth[batch, order] > 0)  # fmt: skip
        outputs, poses = model.forward_with_pose_iterations(images[batch, order])
        loss, _ = vggt_loss(outputs, poses, targets, loss_config)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()


if __name__ == "__main__":
    main()
