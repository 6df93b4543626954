"""Teacher training: recipe checks, schedule, a tiny reproducible run, resume, time budget, CLI errors."""

from __future__ import annotations

import json
import time

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from lite3r.train import HELD_OUT_SEED, TeacherConfig, TrainError, train_teacher
from lite3r.train.teacher import _estimate_now, _steps_that_fit

TINY = dict(model="vggt-tiny", image_size=28, views=(2, 2), images_per_step=4, pool_scenes=2, refresh_per_step=1,
            warmup_steps=1, eval_every=0, eval_scenes=1, eval_views=2, probe_steps=1, checkpoint_every=1)  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(views=(3, 2)), "views"),
        (dict(images_per_step=8, views=(2, 12)), "images_per_step"),
        (dict(seed=HELD_OUT_SEED), "reserved"),
        (dict(pool_scenes=1, views=(2, 4)), "pool_scenes"),
    ],
)
def test_bad_recipe_is_one_clear_error(overrides, message):
    with pytest.raises(TrainError, match=message):
        TeacherConfig(**overrides)


def test_schedule_warms_up_then_decays_to_the_floor():
    config = TeacherConfig(lr=1e-3, warmup_steps=10, min_lr_fraction=0.1)
    assert config.lr_at(0, 100) == pytest.approx(1e-4)
    assert config.lr_at(9, 100) == pytest.approx(1e-3)
    assert config.lr_at(10, 100) == pytest.approx(1e-3)
    assert config.lr_at(55, 100) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert config.lr_at(100, 100) == pytest.approx(1e-4)


def test_step_count_fits_the_remaining_time():
    config = TeacherConfig(eval_every=0, probe_steps=10)
    history = [{"time_s": 5.0}] * 5 + [{"time_s": 1.0}] * 7 + [{"time_s": 9.0}] * 3  # median of the last 10: 1 s
    deadline = time.perf_counter() + 105.0
    fitting = _steps_that_fit(history, [], config, 15, deadline, None)
    assert 15 + 95 <= fitting <= 15 + 97  # 97 % of 105 s, less 5 s kept for the end, at 1 s per step
    assert _steps_that_fit(history, [], config, 15, deadline, 40) == 40
    evals = [{"time_s": 10.0}, {"time_s": 10.0}]  # 10 s every 10 steps: 2 s per step in all
    assert 15 + 42 <= _steps_that_fit(history, evals, TeacherConfig(eval_every=10, probe_steps=10), 15, deadline,
                                      None) <= 15 + 44  # fmt: skip


def test_the_estimate_is_renewed_at_doubling_step_counts_in_the_first_half():
    assert [run for run in range(1, 300) if _estimate_now(run, None, 30)] == [30, 60, 120, 240]
    assert [run for run in range(1, 300) if _estimate_now(run, 300, 30)] == [30, 60, 120]


def test_cli_maps_its_options_onto_the_recipe(tmp_path):
    from lite3r.cli import main

    args = ["train-teacher", "--model", "vggt-tiny", "--size", "28", "--views", "2:2", "--images-per-step", "4",
            "--pool", "2", "--eval-every", "0", "--warmup-steps", "1", "--steps", "1", "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "vggt-tiny.json").read_text())
    assert card["recipe"]["views"] == [2, 2] and card["recipe"]["images_per_step"] == 4
    assert card["recipe"]["lr"] == TeacherConfig().lr and card["steps"] == 1


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # toy sizes: extra threads only wait on a busy machine
    try:
        yield train_teacher(TeacherConfig(**TINY), steps=2, device="cpu", out_dir=out), out
    finally:
        torch.set_num_threads(threads)


def test_run_writes_weights_card_log_and_checkpoint(two_steps):
    result, out = two_steps
    assert result.steps == 2 and len(result.history) == 2
    assert all(torch.isfinite(torch.tensor(r["loss"])) and not r["skipped"] for r in result.history)
    assert {p.name for p in result.files} == {"vggt-tiny.safetensors", "vggt-tiny.json", "checkpoint.pt", "log.jsonl"}
    card = json.loads((out / "vggt-tiny.json").read_text())
    assert card["model"] == "vggt-tiny" and card["steps"] == 2 and card["seed"] == 0
    assert card["recipe"]["images_per_step"] == 4 and card["config"]["img_size"] == 28
    assert set(card["held_out"]["final"]) == {"depth_abs_rel", "depth_delta_1_25", "rotation_error_deg",
                                              "translation_error_deg"}  # fmt: skip
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r.get("step", r.get("eval")) for r in records] == [0, 0, 1, 2]  # eval 0, steps 0 and 1, eval 2
    weights = load_file(out / "vggt-tiny.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in weights.values())
    assert len(result.evals) == 2 and result.model.training is False


def test_resumed_run_equals_the_uninterrupted_one(two_steps, tmp_path):
    result, _ = two_steps
    train_teacher(TeacherConfig(**TINY), steps=1, device="cpu", out_dir=tmp_path)
    resumed = train_teacher(TeacherConfig(**TINY), steps=2, device="cpu", out_dir=tmp_path)
    assert [r["step"] for r in resumed.history] == [1]
    for (name, a), b in zip(result.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
    again = train_teacher(TeacherConfig(**TINY), steps=2, device="cpu", out_dir=tmp_path)  # complete: no steps
    assert again.steps == 2 and again.history == []
    with pytest.raises(TrainError, match="another recipe"):
        train_teacher(TeacherConfig(**{**TINY, "lr": 1e-3}), steps=2, device="cpu", out_dir=tmp_path)
    fresh = train_teacher(TeacherConfig(**TINY), steps=1, device="cpu", out_dir=tmp_path, resume=False)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert fresh.steps == 1 and [r.get("step", r.get("eval")) for r in records] == [0, 0, 1]


def test_a_budget_too_small_for_one_step_is_an_error():
    with pytest.raises(TrainError, match="before the first training step"):
        train_teacher(TeacherConfig(**TINY), minutes=1e-6, device="cpu")


@pytest.mark.parametrize(
    ("args", "message"),
    [([], "give --steps N, --minutes M, or both"), (["--steps", "1", "--views", "a:b"], "is not MIN:MAX")],
)
def test_cli_bad_input(tmp_path, args, message):
    from lite3r.cli import main

    result = CliRunner().invoke(main, ["train-teacher", "--device", "cpu", *args, "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
