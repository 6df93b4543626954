"""Shipped weights: default loading, a clear error when they are missing, and the checked install."""

from __future__ import annotations

import json

import pytest
import torch

import lite3r
from lite3r.models import CheckpointError, MissingWeightsError, has_trained_weights, pretrained_weights
from lite3r.models import _pretrained
from lite3r.models._pretrained import install_weights, save_weights


@pytest.fixture
def no_installed_weights(monkeypatch, tmp_path):
    """Point the package's weights folder at an empty one."""
    monkeypatch.setattr(_pretrained, "WEIGHTS_DIR", tmp_path / "weights")
    return tmp_path / "weights"


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory):
    """A vggt-small 'training output': random weights with a weight card, as train-teacher writes them."""
    folder = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    model = lite3r.load_model("vggt-small", pretrained=False)
    save_weights(model, folder / "vggt-small.safetensors", {"model": "vggt-small", "steps": 7})
    return folder, model


def test_only_vggt_small_ships_weights():
    assert pretrained_weights("vggt-small").name == "vggt-small.safetensors"
    assert pretrained_weights("vggt-tiny") is None and pretrained_weights("vggt") is None
    assert has_trained_weights("vggt-small") and not has_trained_weights("vggt-small", pretrained=False)
    assert not has_trained_weights("vggt-tiny") and has_trained_weights("vggt-tiny", "some.pt")


def test_missing_weights_one_line_error_and_random_fallback(no_installed_weights):
    with pytest.raises(MissingWeightsError, match=r"vggt-small: trained weights not installed .*install_teacher"):
        lite3r.load_model("vggt-small")
    model = lite3r.load_model("vggt-small", pretrained=False)
    assert sum(p.numel() for p in model.parameters()) == 9_858_484
    assert model.config.img_size == 224 and model.aggregator.global_blocks[0].attn.head_dim == 64


def test_install_then_load_by_default(no_installed_weights, trained_folder):
    folder, model = trained_folder
    files, card = install_weights(folder, "vggt-small")
    assert [p.name for p in files] == ["vggt-small.safetensors", "vggt-small.json"] and card["steps"] == 7
    assert files[0].stat().st_size <= 20_000_000
    loaded = lite3r.load_model("vggt-small")
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value.to(torch.bfloat16).float(), atol=0, rtol=0)
    assert lite3r.models.weight_card("vggt-small")["steps"] == 7


def test_install_joins_split_pieces(no_installed_weights, trained_folder, tmp_path):
    """A GPU run returns files of at most 16 MiB: the weights come back as .part0, .part1, ..."""
    folder, _ = trained_folder
    data = (folder / "vggt-small.safetensors").read_bytes()
    pieces = tmp_path / "pieces"
    pieces.mkdir()
    for i in range(12):  # .part10 and .part11 must come after .part9
        (pieces / f"vggt-small.safetensors.part{i}").write_bytes(data[i * len(data) // 12 : (i + 1) * len(data) // 12])
    (pieces / "vggt-small.json").write_text((folder / "vggt-small.json").read_text())
    files, _ = install_weights(pieces, "vggt-small")
    assert files[0].read_bytes() == data
    (pieces / "vggt-small.safetensors.part3").unlink()
    with pytest.raises(CheckpointError, match="SHA-256"):
        install_weights(pieces, "vggt-small")


def test_install_refuses_a_damaged_or_foreign_file(no_installed_weights, trained_folder, tmp_path):
    folder, _ = trained_folder
    bad = tmp_path / "bad"
    bad.mkdir()
    data = bytearray((folder / "vggt-small.safetensors").read_bytes())
    data[-1] ^= 1
    (bad / "vggt-small.safetensors").write_bytes(bytes(data))
    (bad / "vggt-small.json").write_text((folder / "vggt-small.json").read_text())
    with pytest.raises(CheckpointError, match="SHA-256"):
        install_weights(bad, "vggt-small")
    card = json.loads((folder / "vggt-small.json").read_text()) | {"model": "vggt-tiny"}
    (bad / "vggt-small.safetensors").write_bytes((folder / "vggt-small.safetensors").read_bytes())
    (bad / "vggt-small.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="describes model 'vggt-tiny', not 'vggt-small'"):
        install_weights(bad, "vggt-small")
    with pytest.raises(CheckpointError, match="not a preset with shipped weights"):
        install_weights(folder, "vggt-tiny")
    assert not no_installed_weights.exists() or not any(no_installed_weights.iterdir())


def test_export_without_installed_weights_is_one_clear_error(no_installed_weights, tmp_path):
    from click.testing import CliRunner

    from lite3r.cli import export_main

    out = tmp_path / "out"
    result = CliRunner().invoke(export_main, ["vggt-small", "--fp8", "--out", str(out)])
    assert result.exit_code != 0 and "trained weights not installed" in result.output
    assert "Traceback" not in result.output and (not out.exists() or not any(out.iterdir()))
