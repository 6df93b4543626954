"""`lite3r predict`: artifacts on success, one clear line and nothing written on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from lite3r.cli import main


def _predict(*args):
    return CliRunner().invoke(main, ["predict", "--model", "vggt-tiny", *args])


def test_predict_synthetic_writes_outputs_and_metrics(tmp_path):
    out = tmp_path / "out"
    result = _predict("--synthetic", "3", "--size", "56x84", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["contact_sheet.png", "metrics.json", "predictions.npz"]
    pred = np.load(out / "predictions.npz")
    assert pred["depth"].shape == (3, 56, 84, 1)
    assert pred["world_points"].shape == (3, 56, 84, 3)
    assert pred["extrinsics"].shape == (3, 3, 4) and pred["intrinsics"].shape == (3, 3, 3)
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["depth_delta_1_25"] <= 1 and metrics["depth_abs_rel"] >= 0
    assert "random weights" in result.output


def test_predict_da3_writes_its_outputs_cameras_and_metrics(tmp_path):
    out = tmp_path / "out"
    args = ["predict", "--model", "da3-tiny", "--synthetic", "3", "--size", "56x84", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    pred = np.load(out / "predictions.npz")
    assert sorted(pred) == ["depth", "depth_conf", "extrinsics", "intrinsics"]
    assert pred["depth"].shape == (3, 56, 84) and pred["extrinsics"].shape == (3, 3, 4)
    metrics = json.loads((out / "metrics.json").read_text())
    assert "depth_points_chamfer" in metrics and not any(k.startswith("pointmap") for k in metrics)


def test_predict_image_folder_has_no_metrics(tmp_path):
    folder = tmp_path / "views"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "out"
    result = _predict("--images", str(folder), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["contact_sheet.png", "predictions.npz"]
    # the tiny preset resizes to width 112, the height keeps the aspect ratio rounded to a multiple of 14
    assert np.load(out / "predictions.npz")["depth"].shape == (2, 84, 112, 1)


def test_checkpoint_is_used(tmp_path):
    torch.manual_seed(1)
    import lite3r
    from safetensors.torch import save_file

    model = lite3r.load_model("vggt-tiny")
    ckpt = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, ckpt)
    result = _predict("--checkpoint", str(ckpt), "--synthetic", "2", "--out", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    assert "random weights" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "exactly one of --images DIR or --synthetic N"),
        (["--synthetic", "2", "--images", "x"], "exactly one of --images DIR or --synthetic N"),
        (["--synthetic", "2", "--size", "abc"], "is not HxW"),
        (["--synthetic", "2", "--size", "50x56"], "multiple"),
        (["--synthetic", "2", "--device", "cuda"], "CUDA is not available"),
        (["--synthetic", "2", "--checkpoint", "missing.pt"], "missing.pt"),
        (["--images", "no_such_folder"], "no_such_folder"),
    ],
)
def test_bad_input_gives_one_clear_error_and_no_output(tmp_path, args, message):
    out = tmp_path / "out"
    result = _predict(*args, "--out", str(out))
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())


def test_out_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = _predict("--synthetic", "2", "--out", str(blocker / "sub"))
    assert result.exit_code != 0 and "cannot create output folder" in result.output
    assert blocker.read_text() == "x"
    result = _predict("--synthetic", "2", "--out", str(blocker))
    assert result.exit_code != 0 and "is a file" in result.output


def test_unknown_model(tmp_path):
    result = CliRunner().invoke(main, ["predict", "--model", "nope", "--synthetic", "2", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "unknown model 'nope'" in result.output and "vggt-tiny" in result.output


def test_predict_sla_student_differs_from_dense_and_loads_a_distilled_student(tmp_path):
    dense, sparse = tmp_path / "dense", tmp_path / "sla"
    for out, extra in ((dense, []), (sparse, ["--sla", "--kh", "0.05"])):
        result = _predict("--synthetic", "4", "--size", "112x112", "--out", str(out), *extra)
        assert result.exit_code == 0, result.output
    a, b = np.load(dense / "predictions.npz"), np.load(sparse / "predictions.npz")
    assert a["depth"].shape == b["depth"].shape
    assert not np.allclose(a["pose_enc"], b["pose_enc"])  # 4 views of 112x112: block-sparse attention differs

    import lite3r
    from lite3r.distill import save_student

    torch.manual_seed(0)
    student = lite3r.convert_to_sla(lite3r.load_model("vggt-tiny"), kh=0.05)
    (tmp_path / "student").mkdir()
    save_student(student, tmp_path / "student")
    result = _predict("--synthetic", "4", "--size", "112x112", "--student", str(tmp_path / "student"),
                      "--out", str(tmp_path / "loaded"))
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(tmp_path / "loaded" / "predictions.npz")["pose_enc"], b["pose_enc"])
