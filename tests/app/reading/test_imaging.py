"""app.reading.decode and normalize: decode safely, make any digit look like MNIST."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from app.core.errors import DOMAIN_STATUS, DomainError
from app.reading.decode import decode_image
from app.reading.normalize import (
    center_digit,
    ink_map,
    normalize_image,
    prepare_digit,
    to_grayscale,
)
from tests.app.conftest import encode, pen_on_paper, png_header

MAX = 25_000_000
MNIST = tuple[np.ndarray, np.ndarray]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


def _error(data: bytes, max_pixels: int = MAX) -> DomainError:
    with pytest.raises(DomainError) as info:
        decode_image(data, max_pixels=max_pixels)
    return info.value


# --- decode_image --------------------------------------------------------------------------


def test_empty_file_is_refused() -> None:
    err = _error(b"")
    assert (DOMAIN_STATUS[err.code], err.code) == (400, "empty_file")


def test_bytes_that_are_no_image_are_refused() -> None:
    err = _error(b"hello, this is a text file\n" * 20)
    assert (DOMAIN_STATUS[err.code], err.code) == (400, "not_an_image")
    assert "PNG" in err.message


def test_unsupported_format_names_the_accepted_ones() -> None:
    tiff = encode(Image.new("L", (28, 28)), "TIFF")
    err = _error(tiff)
    assert (DOMAIN_STATUS[err.code], err.code) == (415, "unsupported_format")
    assert "TIFF" in err.message
    for fmt in ("PNG", "JPEG", "BMP", "GIF", "WebP"):
        assert fmt in err.message


@pytest.mark.parametrize("size", [(100_000, 100_000), (6000, 5000)])
def test_declared_size_over_the_limit_is_refused_before_decoding(size: tuple[int, int]) -> None:
    # A header alone: were the pixels decoded, this would fail as truncated, not as too large.
    err = _error(png_header(*size))
    assert (DOMAIN_STATUS[err.code], err.code) == (413, "image_too_large")
    assert "25,000,000" in err.message


def test_pixel_limit_is_the_configured_one() -> None:
    data = encode(Image.new("L", (100, 100)))
    assert decode_image(data, max_pixels=10_000).size == (100, 100)
    err = _error(data, max_pixels=9_999)
    assert err.code == "image_too_large"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_truncated_image_is_refused(fmt: str) -> None:
    rng = np.random.default_rng(1)
    noise = Image.fromarray(rng.integers(0, 255, (200, 200), dtype=np.uint8))
    data = encode(noise, fmt)
    err = _error(data[: len(data) // 2])
    assert (DOMAIN_STATUS[err.code], err.code) == (400, "truncated_image")


def test_cut_inside_the_header_is_called_truncated() -> None:
    err = _error(encode(Image.new("L", (28, 28)))[:20])
    assert err.code == "truncated_image"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "WEBP"])
def test_accepted_formats_decode(fmt: str) -> None:
    img = decode_image(encode(Image.new("RGB", (30, 20), "white"), fmt), max_pixels=MAX)
    assert img.size == (30, 20)


def test_gif_gives_its_first_frame() -> None:
    first = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(first).rectangle((5, 5, 10, 20), fill=255)
    second = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(second).rectangle((15, 5, 25, 20), fill=255)
    data = encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    gray = to_grayscale(decode_image(data, max_pixels=MAX))
    assert gray[10, 7] > 200
    assert gray[10, 20] < 50


def test_exif_orientation_is_applied() -> None:
    upright = Image.new("L", (40, 20), 0)
    ImageDraw.Draw(upright).rectangle((0, 0, 9, 19), fill=255)  # a bar on the left
    # Stored rotated; orientation 6 says "rotate 90° clockwise to display".
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", exif=exif, quality=95)
    shown = to_grayscale(decode_image(data, max_pixels=MAX))
    assert shown.shape == (20, 40)
    assert shown[:, :10].mean() > 200
    assert shown[:, 20:].mean() < 30


# --- to_grayscale --------------------------------------------------------------------------


def _strokes(fill: tuple[int, int, int, int]) -> Image.Image:
    img = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    ImageDraw.Draw(img).line([(100, 30), (100, 170)], fill=fill, width=16)
    return img


@pytest.mark.parametrize("colour", [(0, 0, 0, 255), (255, 255, 255, 255), (20, 40, 200, 255)])
def test_canvas_strokes_on_transparent_background_become_ink(
    colour: tuple[int, int, int, int],
) -> None:
    ink = ink_map(to_grayscale(_strokes(colour)))
    assert ink[100, 100] > 0.9
    assert ink[100, 20] == 0.0


def test_fully_transparent_image_has_no_ink() -> None:
    ink = ink_map(to_grayscale(Image.new("RGBA", (50, 50), (0, 0, 0, 0))))
    with pytest.raises(DomainError) as info:
        center_digit(ink)
    assert info.value.code == "no_digit_found"


def test_sixteen_bit_images_are_scaled_to_eight_bit_range() -> None:
    wide = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257).astype(np.uint16)
    img = Image.open(io.BytesIO(encode(Image.fromarray(wide))))
    assert img.mode.startswith("I")
    gray = to_grayscale(img)
    np.testing.assert_allclose(gray, np.arange(256).reshape(16, 16), atol=0.01)


def test_palette_image_goes_through_its_palette() -> None:
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    img.putpixel((3, 3), 1)
    gray = to_grayscale(img)
    assert gray[3, 3] == 255.0
    assert gray[0, 0] == 0.0


# --- ink_map and center_digit --------------------------------------------------------------


def test_dark_ink_on_light_paper_is_inverted() -> None:
    paper = np.full((100, 100), 230, np.float32)
    paper[20:80, 45:55] = 30
    ink = ink_map(paper)
    assert ink[50, 50] == pytest.approx(1.0)
    assert ink[10, 10] == 0.0


def test_uneven_lighting_is_not_taken_for_ink() -> None:
    xx = np.linspace(0, 1, 300, dtype=np.float32)[None, :]
    paper = np.repeat(120 + 120 * xx, 300, axis=0)  # dim on the left, bright on the right
    paper[100:200, 140:160] -= 100
    ink = ink_map(paper)
    assert ink[150, 150] > 0.9
    assert ink[:, :100].max() == 0.0
    assert ink[:, 200:].max() == 0.0


def test_blank_or_uniform_image_has_no_digit() -> None:
    for value in (0, 128, 255):
        with pytest.raises(DomainError) as info:
            center_digit(ink_map(np.full((60, 60), value, np.float32)))
        assert (DOMAIN_STATUS[info.value.code], info.value.code) == (422, "no_digit_found")


def test_noise_alone_is_not_a_digit() -> None:
    rng = np.random.default_rng(3)
    paper = 200 + rng.normal(0, 8, (300, 300)).astype(np.float32)
    assert ink_map(paper).max() == 0.0


def test_center_digit_fits_20_box_and_centres_mass() -> None:
    ink = np.zeros((300, 500), np.float32)
    ink[50:250, 400:440] = 1.0  # a tall bar far off-centre
    out = center_digit(ink)
    assert out.shape == (28, 28)
    assert out.dtype == np.uint8
    rows = np.flatnonzero(out.max(axis=1))
    assert rows[-1] - rows[0] + 1 == 20
    ys, xs = np.mgrid[0:28, 0:28]
    mass = out.astype(np.float64).sum()
    assert abs((out * ys).sum() / mass - 14.0) <= 0.5
    assert abs((out * xs).sum() / mass - 14.0) <= 0.5


def test_thin_pen_strokes_are_thickened_to_mnist_width() -> None:
    img = Image.new("L", (600, 800), 255)
    ImageDraw.Draw(img).line([(300, 100), (300, 700)], fill=0, width=4)  # a fine-pen "1"
    out = center_digit(ink_map(to_grayscale(img)))
    lit_columns = int((out.max(axis=0) > 127).sum())
    assert 2 <= lit_columns <= 4


# --- prepare_digit on MNIST ----------------------------------------------------------------


def test_auto_passes_mnist_pngs_unchanged(mnist_test: MNIST) -> None:
    images, _ = mnist_test
    for i in range(0, 10_000, 97):
        pixels, normalized = prepare_digit(
            encode(Image.fromarray(images[i])), normalize="auto", max_pixels=MAX
        )
        assert not normalized
        np.testing.assert_array_equal(pixels, images[i])


def test_never_only_converts_to_gray(mnist_test: MNIST) -> None:
    images, _ = mnist_test
    inverted = Image.fromarray(255 - images[0]).convert("RGB")
    pixels, normalized = prepare_digit(encode(inverted), normalize="never", max_pixels=MAX)
    assert not normalized
    np.testing.assert_array_equal(pixels, 255 - images[0])


def test_never_needs_28_by_28() -> None:
    with pytest.raises(DomainError) as info:
        prepare_digit(encode(Image.new("L", (56, 56))), normalize="never", max_pixels=MAX)
    assert (DOMAIN_STATUS[info.value.code], info.value.code) == (422, "wrong_size")
    assert "56×56" in info.value.message


def test_always_normalizes_even_mnist(mnist_test: MNIST) -> None:
    images, _ = mnist_test
    pixels, normalized = prepare_digit(
        encode(Image.fromarray(images[0])), normalize="always", max_pixels=MAX
    )
    assert normalized
    assert _corr(pixels, images[0]) > 0.95


def test_auto_normalizes_inverted_mnist(mnist_test: MNIST) -> None:
    images, _ = mnist_test
    pixels, normalized = prepare_digit(
        encode(Image.fromarray(255 - images[1])), normalize="auto", max_pixels=MAX
    )
    assert normalized
    assert _corr(pixels, images[1]) > 0.95


def test_renormalizing_mnist_digits_changes_little(mnist_test: MNIST) -> None:
    images, _ = mnist_test
    scores = [
        _corr(normalize_image(Image.fromarray(images[i]).convert("RGB")), images[i])
        for i in range(100)
    ]
    assert np.median(scores) > 0.98
    assert min(scores) > 0.6


def test_pen_on_paper_photo_looks_like_the_mnist_digit(mnist_test: MNIST) -> None:
    images, _ = mnist_test
    scores = []
    for i in range(20):
        photo = encode(pen_on_paper(images[i], seed=i), "JPEG", quality=85)
        pixels, normalized = prepare_digit(photo, normalize="auto", max_pixels=MAX)
        assert normalized
        scores.append(_corr(pixels, normalize_image(Image.fromarray(images[i]))))
    assert np.median(scores) > 0.9
    assert min(scores) > 0.6


# --- large images: reduced before any float work --------------------------------------------


def _large(digit: np.ndarray, size: int = 1400) -> np.ndarray:
    """The digit scaled up to ``size`` pixels, white on black, as uint8."""
    big = Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(big, np.uint8)


@pytest.mark.parametrize("kind", ["rgba-canvas", "palette", "16-bit", "jpeg", "cmyk-jpeg"])
def test_large_images_of_every_kind_normalize_like_the_digit(mnist_test: MNIST, kind: str) -> None:
    images, _ = mnist_test
    digit = images[3]
    big = _large(digit)
    paper = Image.fromarray(255 - big)  # dark ink on white
    uploads = {
        # Black strokes on a transparent canvas: the ink is in the alpha channel.
        "rgba-canvas": lambda: encode(
            Image.merge("RGBA", [Image.new("L", paper.size, 0)] * 3 + [Image.fromarray(big)])
        ),
        "palette": lambda: encode(paper.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)),
        "16-bit": lambda: encode(Image.fromarray(big.astype(np.uint16) * 257)),
        # JPEG is decoded at reduced scale directly (draft mode).
        "jpeg": lambda: encode(paper, "JPEG", quality=90),
        "cmyk-jpeg": lambda: encode(paper.convert("CMYK"), "JPEG", quality=90),
    }
    pixels, normalized = prepare_digit(uploads[kind](), normalize="auto", max_pixels=MAX)
    assert normalized
    assert _corr(pixels, normalize_image(Image.fromarray(digit))) > 0.9


def test_fast_mnist_check_agrees_with_the_general_polarity_rule(mnist_test: MNIST) -> None:
    from app.reading.normalize import _ink_is_dark, _is_mnist_style

    images, _ = mnist_test
    rng = np.random.default_rng(5)
    cases = [*images[:2000], *(255 - images[:2000])]
    cases += [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(500)]
    cases += [np.full((28, 28), 9, np.uint8)]
    for pixels in cases:
        general = bool(pixels.max() > pixels.min() and not _ink_is_dark(pixels))
        assert _is_mnist_style(pixels) == general
