from __future__ import annotations

import json

from click.testing import CliRunner

from lite3r.cli_train import calibrate_command, distill_command

TINY = ["--model", "vggt-tiny", "--views", "2", "--size", "56", "--scenes", "1"]


def test_distill_then_calibrate_the_student(tmp_path):
    runner = CliRunner()
    result = runner.invoke(distill_command, [*TINY, "--steps", "2", "--no-fp8", "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert "loss" in result.output and "student.safetensors" in result.output
    assert len((tmp_path / "s" / "log.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "s" / "quant_state.json").exists()

    result = runner.invoke(
        calibrate_command,
        [*TINY, "--student", str(tmp_path / "s"), "--batches", "1", "--fp8-layers", "aggregator.global_blocks.*",
         "--out", str(tmp_path / "q")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    state = json.loads((tmp_path / "q" / "quant_state.json").read_text())
    assert {e["module"].split(".")[1] for e in state["quantizers"]} == {"global_blocks"}


def test_bad_input_is_one_line(tmp_path):
    result = CliRunner().invoke(distill_command, [*TINY, "--data", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == f"Error: data folder not found: {tmp_path / 'nope'}"
    assert "Traceback" not in result.output


def _three_jpegs(folder):
    import numpy as np
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    return folder


def test_calibrate_and_distill_on_a_folder_of_three_images(tmp_path):
    """Defaults (2 views, 4 batches) on 3 images used to reach an empty scene and crash in the aggregator."""
    folder = _three_jpegs(tmp_path / "imgs")
    common = ["--model", "vggt-tiny", "--size", "56", "--data", str(folder)]
    result = CliRunner().invoke(calibrate_command, [*common, "--out", str(tmp_path / "q")])
    assert result.exit_code == 0, result.output
    assert "Inserted" not in result.stdout  # ModelOpt's progress goes to stderr, not into the results
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == [".lite3r-manifest.json", "quant_state.json"]
    result = CliRunner().invoke(distill_command, [*common, "--steps", "1", "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output


def test_calibrate_output_feeds_parity(tmp_path):
    """`lite3r calibrate` of the dense model writes only quant_state.json; `lite3r parity --student` takes it."""
    from lite3r.cli import main

    result = CliRunner().invoke(calibrate_command, [*TINY, "--batches", "1", "--out", str(tmp_path / "q")])
    assert result.exit_code == 0, result.output
    args = ["parity", "--model", "vggt-tiny", "--student", str(tmp_path / "q"), "--size", "56x56", "--synthetic", "1"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "p" / "parity.json").read_text())
    assert [(c["candidate"], c["reference"]) for c in report["comparisons"]] == [("student", "teacher")]
    assert report["comparisons"][0]["outputs"][1]["absdiff"]["max"] > 0  # the FP8 copy differs from the teacher
