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
