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
    assert sorted(p.name for p in out.iterdir()) == [
        ".lite3r-manifest.json", "contact_sheet.png", "metrics.json", "predictions.npz"
    ]
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
    assert sorted(p.name for p in out.iterdir()) == [".lite3r-manifest.json", "contact_sheet.png", "predictions.npz"]
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
    assert not out.exists()  # not even an empty folder


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


def test_full_size_model_without_checkpoint_is_refused(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["predict", "--synthetic", "2", "--out", str(out)])  # default --model vggt
    assert result.exit_code != 0 and "without --checkpoint builds the full model with random weights" in result.output
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_pt2_for_cuda_without_a_gpu_fails_before_the_model_is_built(tmp_path, monkeypatch):
    import lite3r

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the device was checked")

    monkeypatch.setattr(lite3r, "load_model", no_model)
    out = tmp_path / "model.pt2"
    result = CliRunner().invoke(main, ["build", "--target", "torch", "--out", str(out)])  # default --device cuda
    assert result.exit_code != 0 and "device cuda: no CUDA GPU here" in result.output, result.output
    assert not out.exists()


def test_single_view_metrics_json_is_valid_json(tmp_path):
    """Pose errors of one view are undefined: they used to be written as NaN, which is not JSON."""
    out = tmp_path / "out"
    result = _predict("--synthetic", "1", "--size", "56x56", "--out", str(out))
    assert result.exit_code == 0, result.output

    def refuse(constant):
        raise ValueError(f"{constant} in metrics.json")

    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=refuse)
    assert metrics["rotation_error_deg"] is None and metrics["depth_abs_rel"] >= 0


def test_contact_sheet_has_a_true_depth_column_and_says_when_views_are_left_out(tmp_path):
    from lite3r.viz import contact_sheet

    rng = np.random.default_rng(0)
    images, depth = rng.random((14, 3, 28, 28)), rng.random((14, 28, 28)) + 1
    narrow = Image.open(contact_sheet(tmp_path / "a.png", images[:2], depth[:2], depth[:2])).size
    wide = Image.open(contact_sheet(tmp_path / "b.png", images[:2], depth[:2], depth[:2], true_depth=depth[:2])).size
    assert wide[0] > narrow[0] and wide[1] == narrow[1]
    out = tmp_path / "out"
    result = _predict("--synthetic", "14", "--size", "28x28", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "shows the first 12 of 14 views" in result.output
