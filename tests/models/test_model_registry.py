"""Presets, config overrides and the VGGT-1B state-dict layout (checked on the meta device)."""

from __future__ import annotations

import json

import pytest
import torch

import lite3r
from lite3r.models import VGGT, ConfigError, DepthAnything3, load_model

from conftest import FIXTURES


def test_list_models_names_the_presets():
    assert {"vggt", "vggt-small", "vggt-tiny", "da3-large", "da3-tiny"} <= set(lite3r.list_models())
    assert lite3r.list_models() == sorted(lite3r.list_models())


@pytest.mark.parametrize(
    ("model_class", "shapes", "count"),
    [(VGGT, "vggt1b_state_dict_shapes.json", 1797), (DepthAnything3, "da3large_state_dict_shapes.json", 643)],
    ids=["vggt-1b", "da3-large"],
)
def test_full_size_state_dict_has_exactly_the_official_names_and_shapes(model_class, shapes, count):
    official = json.loads((FIXTURES / shapes).read_text())
    with torch.device("meta"):
        model = model_class()
    ours = {name: list(t.shape) for name, t in model.state_dict().items()}
    assert sorted(set(official) - set(ours)) == []
    assert sorted(set(ours) - set(official)) == []
    assert {k: v for k, v in ours.items() if official[k] != v} == {}
    assert len(ours) == count


def test_unknown_model_lists_the_available_ones():
    message = r"unknown model 'vggt-huge'; available: da3-large, da3-tiny, vggt, .*vggt-tiny"
    with pytest.raises(ConfigError, match=message):
        load_model("vggt-huge")


def test_unknown_override_lists_the_valid_fields():
    with pytest.raises(ConfigError, match=r"unknown VGGT config field\(s\) dept; valid fields: .*depth"):
        load_model("vggt-tiny", dept=3)


def test_inconsistent_override_is_rejected():
    with pytest.raises(ConfigError, match=r"dpt_layers \(1, 2, 4, 5\) must be 4 layer indices in \[0, depth=4\)"):
        load_model("vggt-tiny", depth=4)


def test_overrides_change_the_built_model():
    model = load_model("vggt-tiny", depth=4, dpt_layers=[0, 1, 2, 3], camera_trunk_depth=2)
    assert len(model.aggregator.frame_blocks) == len(model.aggregator.global_blocks) == 4
    assert len(model.camera_head.trunk) == 2
    assert model.config.dpt_layers == (0, 1, 2, 3)
    assert model.aggregator.keep_layers == {0, 1, 2, 3}


def test_load_model_returns_eval_mode_with_random_weights(caplog):
    with caplog.at_level("INFO", logger="lite3r.models"):
        model = lite3r.load_model("vggt-tiny")
    assert not model.training
    assert "randomly initialised" in caplog.text
