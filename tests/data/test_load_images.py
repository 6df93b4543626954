from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lite3r.data import ImageLoadError, load_images


def _save(path, width, height, color=(200, 40, 90), mode="RGB"):
    fill = color if mode == "RGB" else (*color, 0)
    Image.new(mode, (width, height), fill).save(path)
    return path


@pytest.mark.parametrize(
    ("size_wh", "mode", "expected_hw"),
    [
        ((1024, 768), "crop", (392, 518)),  # 768 * 518/1024 = 388.5 -> 28 patches
        ((600, 900), "crop", (518, 518)),  # 777 -> round(55.5) = 56 patches (784), centre-cropped to 518
        ((300, 300), "crop", (518, 518)),
        ((1024, 768), "pad", (518, 518)),
        ((600, 900), "pad", (518, 518)),
        ((640, 480), "crop", (392, 518)),
    ],
)
def test_output_sizes(tmp_path, size_wh, mode, expected_hw):
    images = load_images([_save(tmp_path / "a.png", *size_wh)], mode=mode)
    assert images.shape == (1, 3, *expected_hw)
    assert images.dtype == torch.float32


def test_pixels_match_bicubic_resize_and_centre_crop(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(900, 600, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "p.png")
    expected = np.asarray(Image.fromarray(pixels).resize((518, 784), Image.Resampling.BICUBIC)) / 255.0
    images = load_images(tmp_path, mode="crop")
    np.testing.assert_allclose(images[0].permute(1, 2, 0).numpy(), expected[133:651], atol=1e-6)


def test_pad_mode_centres_the_image_on_white(tmp_path):
    images = load_images([_save(tmp_path / "p.png", 600, 900, color=(0, 0, 0))], mode="pad")
    # width 600 * 518/900 = 345.3 -> 350 px, centred: 84 white columns left, 84 right
    assert torch.all(images[0, :, :, :84] == 1) and torch.all(images[0, :, :, -84:] == 1)
    assert torch.all(images[0, :, :, 84:-84] == 0)


def test_mixed_sizes_are_padded_to_the_largest_with_white(tmp_path):
    paths = [_save(tmp_path / "a.png", 1024, 768, color=(0, 0, 0)), _save(tmp_path / "b.png", 500, 500)]
    images = load_images(paths, mode="crop")
    assert images.shape == (2, 3, 518, 518)
    # the 392-px-high view gets 63 white rows above and below
    assert torch.all(images[0, :, :63] == 1) and torch.all(images[0, :, -63:] == 1)
    assert torch.all(images[0, :, 63:-63] == 0)


def test_transparency_is_composited_on_white(tmp_path):
    images = load_images([_save(tmp_path / "t.png", 140, 140, mode="RGBA")])
    assert torch.all(images == 1)


def test_folder_is_read_in_sorted_order_skipping_other_files(tmp_path):
    for name, value in (("b.png", 100), ("a.JPG", 0), ("c.webp", 200)):
        _save(tmp_path / name, 56, 56, color=(value,) * 3)
    (tmp_path / "notes.txt").write_text("not an image")
    _save(tmp_path / "._a.png", 56, 56)  # macOS metadata file, hidden
    images = load_images(tmp_path)
    assert images.shape[0] == 3
    means = images.mean(dim=(1, 2, 3))
    assert means[0] < means[1] < means[2]


def test_explicit_list_keeps_its_order(tmp_path):
    dark, light = _save(tmp_path / "a.png", 56, 56, (0, 0, 0)), _save(tmp_path / "b.png", 56, 56, (255,) * 3)
    assert load_images([light, dark]).mean(dim=(1, 2, 3)).tolist() == [1.0, 0.0]


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda d: d / "missing", "image folder not found"),
        (lambda d: d, "no images in"),
        (lambda d: [d / "nope.png"], "image not found: .*nope.png"),
        (lambda d: [], "no images given"),
        (lambda d: [_garbage(d / "broken.png")], "cannot read image .*broken.png"),
        (lambda d: [_truncated(d / "cut.jpg")], "cannot read image .*cut.jpg"),
        (lambda d: [_save(d / "tiny.png", 13, 40)], "tiny.png is 13x40 px; both sides must be at least 14 px"),
        (lambda d: [_save(d / "strip.png", 4000, 20)], "strip.png is 4000x20 px, too elongated"),
    ],
)
def test_bad_input_gives_one_clear_error(tmp_path, setup, match):
    with pytest.raises(ImageLoadError, match=match):
        load_images(setup(tmp_path))


def test_a_file_is_not_a_folder(tmp_path):
    with pytest.raises(ImageLoadError, match="not a folder"):
        load_images(str(_save(tmp_path / "a.png", 56, 56)))


@pytest.mark.parametrize(("kwargs", "match"), [({"mode": "stretch"}, "mode must be one of"),
                                               ({"target_size": 500}, "multiple of 14")])  # fmt: skip
def test_bad_options_are_rejected(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_images([_save(tmp_path / "a.png", 56, 56)], **kwargs)


def _garbage(path):
    path.write_bytes(b"this is not a png")
    return path


def _truncated(path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    return path


def test_16_bit_grey_png_is_scaled_not_white(tmp_path):
    ramp = (np.arange(56 * 56).reshape(56, 56) * 20).astype(np.uint16)  # 0 .. 62700 of 65535
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    [view] = load_images(tmp_path, target_size=56)
    np.testing.assert_allclose(view[0].numpy(), ramp / 65535, atol=1e-6)  # same size: no resampling
    assert torch.equal(view[0], view[1]) and torch.equal(view[1], view[2])


def test_float_images_outside_0_1_or_not_finite_are_refused(tmp_path):
    for name, value in (("big.tif", 3.0), ("nan.tif", float("nan"))):
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        Image.fromarray(np.full((28, 28), value, np.float32)).save(folder / name)
        message = "NaN or Inf" if value != value else r"values in \[3, 3\]"
        with pytest.raises(ImageLoadError, match=message):
            load_images(folder, target_size=28)
