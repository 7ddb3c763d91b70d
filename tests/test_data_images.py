"""Image loading: every mode to RGB, EXIF orientation, 16-bit scaling, truncated files."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from vqa.data import ImageDecodeError, load_image

TO_TENSOR_32 = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()])


def save(image, path, **kwargs):
    image.save(path, **kwargs)
    return path


# I1: grayscale JPEG, CMYK JPEG, RGBA PNG, palette PNG with transparency.
@pytest.fixture
def mixed_mode_files(tmp_path):
    gray = Image.fromarray(np.full((20, 30), 100, dtype=np.uint8), mode="L")
    cmyk = Image.new("CMYK", (30, 20), (0, 255, 255, 0))  # pure red in CMYK
    rgba = Image.new("RGBA", (30, 20), (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 15, 20))  # left half fully transparent
    palette = Image.new("P", (30, 20), 0)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(1, (15, 0, 30, 20))  # right half green, left half index 0
    return {
        "gray": save(gray, tmp_path / "gray.jpg"),
        "cmyk": save(cmyk, tmp_path / "cmyk.jpg"),
        "rgba": save(rgba, tmp_path / "rgba.png"),
        "palette": save(palette, tmp_path / "palette.png", transparency=0),
    }


def test_mixed_modes_become_rgb_tensors(mixed_mode_files):
    for name, path in mixed_mode_files.items():
        assert Image.open(path).mode != "RGB", name
        image = load_image(path)
        assert image.mode == "RGB", name
        tensor = TO_TENSOR_32(image)
        assert tensor.shape == (3, 32, 32), name
        assert tensor.dtype == torch.float32, name


def test_grayscale_and_cmyk_colours(mixed_mode_files):
    gray = np.asarray(load_image(mixed_mode_files["gray"]))
    assert np.abs(gray.astype(int) - 100).max() <= 2
    red = np.asarray(load_image(mixed_mode_files["cmyk"])).reshape(-1, 3).mean(axis=0)
    assert red[0] > 240
    assert red[1] < 15
    assert red[2] < 15


def test_transparency_composited_on_white(mixed_mode_files):
    rgba = np.asarray(load_image(mixed_mode_files["rgba"]))
    assert rgba[10, 2].tolist() == [255, 255, 255]
    assert rgba[10, 25].tolist() == [0, 0, 255]
    palette = np.asarray(load_image(mixed_mode_files["palette"]))
    assert palette[10, 2].tolist() == [255, 255, 255]
    assert palette[10, 25].tolist() == [0, 255, 0]


def test_background_colour_is_configurable(mixed_mode_files):
    rgba = np.asarray(load_image(mixed_mode_files["rgba"], background=(0, 0, 0)))
    assert rgba[10, 2].tolist() == [0, 0, 0]


# I2: 16-bit grayscale PNG with mean about 40000 of 65535.
def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(35000, 45001, size=(24, 24)).astype(np.uint16)
    path = save(Image.fromarray(pixels), tmp_path / "deep.png")
    assert Image.open(path).mode == "I;16"
    tensor = TO_TENSOR_32(load_image(path))
    assert tensor.shape == (3, 32, 32)
    assert tensor.mean().item() == pytest.approx(pixels.mean() / 65535, abs=0.005)
    assert tensor.mean().item() == pytest.approx(0.61, abs=0.01)


def test_sixteen_bit_extremes(tmp_path):
    pixels = np.array([[0, 257, 65535]], dtype=np.uint16)
    path = save(Image.fromarray(pixels), tmp_path / "extremes.png")
    assert np.asarray(load_image(path))[0, :, 0].tolist() == [0, 1, 255]


# I3: phone JPEG stored landscape with an orientation tag (same 4:3 aspect, smaller).
def test_exif_orientation_is_applied(tmp_path):
    stored = Image.new("RGB", (40, 30), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 8, 8))  # red mark at the stored top-left
    exif = stored.getexif()
    exif[0x0112] = 6  # orientation 6: rotate 90 degrees clockwise to display
    path = save(stored, tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    assert Image.open(path).size == (40, 30)

    upright = load_image(path)
    assert upright.size == (30, 40)
    pixels = np.asarray(upright)
    # After a clockwise quarter turn the stored top-left is the top-right.
    assert pixels[2, 27, 0] > 200
    assert pixels[2, 27, 2] < 60
    assert pixels[2, 2, 2] > 200
    assert TO_TENSOR_32.transforms[1](upright).shape == (3, 40, 30)


# I4: JPEG missing its last bytes.
@pytest.fixture
def truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    path = save(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), tmp_path / "cut.jpg")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_truncated_jpeg_raises_with_path(truncated_jpeg):
    with pytest.raises(ImageDecodeError, match="cut.jpg") as error:
        load_image(truncated_jpeg, policy="raise")
    assert isinstance(error.value, OSError)
    assert error.value.path == str(truncated_jpeg)


def test_truncated_jpeg_skip_logs_path(truncated_jpeg, caplog):
    with caplog.at_level(logging.WARNING, logger="vqa.data.images"):
        assert load_image(truncated_jpeg, policy="skip") is None
    assert str(truncated_jpeg) in caplog.text


def test_missing_and_non_image_files(tmp_path):
    with pytest.raises(ImageDecodeError, match="absent.png.*not found"):
        load_image(tmp_path / "absent.png")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ImageDecodeError, match="notes.jpg"):
        load_image(text)


def test_unknown_policy():
    with pytest.raises(ValueError, match="raise, skip"):
        load_image("x.jpg", policy="ignore")
