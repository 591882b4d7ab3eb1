"""The web page in a real headless chromium against the real service and the bundled model.

Each test drives the page as a person would (mouse strokes on the pad, a file picked or dropped)
and checks what the page shows against what the service answers. Screenshots land in
``artifacts/screenshots/``.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from tests.browser.support import REPO_ROOT, PageRecord

pytestmark = pytest.mark.browser

Point = tuple[float, float]

# Strokes in pad coordinates (0..1 across, 0..1 down), drawn the way people write these digits.
ONE: list[list[Point]] = [[(0.53, 0.18), (0.50, 0.50), (0.47, 0.82)]]
ZERO: list[list[Point]] = [
    [
        (0.5 + 0.22 * math.sin(2 * math.pi * k / 32), 0.5 - 0.32 * math.cos(2 * math.pi * k / 32))
        for k in range(33)
    ]
]
SEVEN: list[list[Point]] = [
    [(0.28, 0.22), (0.72, 0.22)],
    [(0.72, 0.22), (0.58, 0.52), (0.45, 0.82)],
]

# Five distinct digits, among them a narrow 1 and a round 0 that segmentation must not merge.
POSTAL_CODE = "40517"
# A digit goes into the test image only if the served model reads it alone at least this surely,
# so a wrong string on the page points at segmentation or the page, not at a hard MNIST digit.
CLEAR_DIGIT_CONFIDENCE = 0.95


COUNT_BOX_PIXELS = """canvas => {
    const g = canvas.getContext("2d");
    const data = g.getImageData(0, 0, canvas.width, canvas.height).data;
    let count = 0;
    for (let i = 0; i < data.length; i += 4) {
        const [red, green, blue] = [data[i], data[i + 1], data[i + 2]];
        if (red > 230 && green > 110 && green < 170 && blue < 40) count += 1;
    }
    return count;
}"""


def draw(page: Page, strokes: Sequence[Sequence[Point]]) -> None:
    """Draw strokes on the pad with mouse events (pointer down, moves, up)."""
    box = page.locator("#pad").bounding_box()
    assert box is not None, "the drawing pad is not visible"

    def at(point: Point) -> Point:
        return box["x"] + point[0] * box["width"], box["y"] + point[1] * box["height"]

    for stroke in strokes:
        page.mouse.move(*at(stroke[0]))
        page.mouse.down()
        for point in stroke[1:]:
            page.mouse.move(*at(point), steps=4)
        page.mouse.up()


def draw_with_finger(page: Page, stroke: Sequence[Point]) -> None:
    """Draw one stroke with touch events, as a finger on a phone screen does."""
    box = page.locator("#pad").bounding_box()
    assert box is not None, "the drawing pad is not visible"
    # Playwright's touchscreen only taps; a drag needs the DevTools protocol's touch input.
    session = page.context.new_cdp_session(page)
    points = [
        {"x": box["x"] + x * box["width"], "y": box["y"] + y * box["height"]} for x, y in stroke
    ]
    session.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [points[0]]})
    for point in points[1:]:
        session.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [point]})
    session.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    session.detach()


def wait_for_guess(page: Page) -> None:
    """Wait until the guess on the page answers the finished drawing."""
    expect(page.locator("#prediction")).to_have_attribute("data-state", "done")


def png_bytes(pixels: np.ndarray) -> bytes:
    """Encode a grayscale uint8 array as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def clear_digits(
    server_url: str, images: np.ndarray, labels: np.ndarray, wanted: str
) -> list[np.ndarray]:
    """For each wanted digit, the first MNIST test image of it the served model reads surely."""
    chosen = []
    with httpx.Client(base_url=server_url, timeout=30.0) as client:
        for char in wanted:
            digit = int(char)
            for index in np.flatnonzero(labels == digit)[:100]:
                answer = client.post(
                    "/predict", files={"file": ("digit.png", png_bytes(images[index]), "image/png")}
                ).json()
                if answer["digit"] == digit and answer["confidence"] >= CLEAR_DIGIT_CONFIDENCE:
                    chosen.append(images[index])
                    break
            else:
                pytest.fail(
                    f"No MNIST test {digit} among the first 100 is read surely by the model"
                )
    return chosen


def postal_code_png(digits: list[np.ndarray], labels: str) -> bytes:
    """The digits side by side, evenly spaced, dark ink on white paper, no noise."""
    from training.postal_codes import Layout, render_postal_code

    layout = Layout(
        length=len(labels),
        digit_height=(56.0, 56.0),
        scale_jitter=(1.0, 1.0),
        aspect_jitter=(1.0, 1.0),
        slant=(0.0, 0.0),
        baseline_jitter=0.0,
        gap=(0.4, 0.4),
        touching_probability=0.0,
        margin=(0.5, 0.5),
        noise_sigma=(0.0, 0.0),
        speck_probability=0.0,
        colour_probability=0.0,
        dark_on_light_probability=1.0,
    )
    rendered = render_postal_code(
        np.random.default_rng(0), digits, [int(char) for char in labels], layout
    )
    return rendered.png


def test_page_shows_the_model_figures_and_needs_no_other_host(
    server_url: str, desktop: PageRecord
) -> None:
    page = desktop.page
    metrics = httpx.get(f"{server_url}/metrics", headers={"Accept": "application/json"}).json()
    model = metrics["model"]

    response = page.goto(f"{server_url}/")
    assert response is not None
    assert response.status == 200
    assert "default-src 'self'" in response.headers["content-security-policy"]

    expect(page).to_have_title("Handwritten digit reader")
    expect(page.locator("#model-version")).to_have_text(str(model["version"]))
    expect(page.locator("#model-accuracy")).to_have_text(f"{model['test']['accuracy'] * 100:.2f} %")
    expect(page.get_by_role("link", name="API documentation")).to_have_attribute("href", "/docs")
    expect(page.get_by_role("button", name="Clear")).to_be_visible()
    expect(page.get_by_label("Choose an image")).to_be_attached()
    expect(page.locator("#bars li")).to_have_count(10)
    page.wait_for_load_state("networkidle")
    desktop.screenshot("01-page-loaded")

    assert f"{server_url}/metrics" in desktop.requests
    assert f"{server_url}/static/app.js" in desktop.requests
    assert desktop.external_requests() == []
    assert desktop.console_errors == []
    assert desktop.page_errors == []


@pytest.mark.parametrize(
    ("digit", "strokes"),
    [
        pytest.param(1, ONE, id="one"),
        pytest.param(0, ZERO, id="zero"),
        pytest.param(7, SEVEN, id="seven"),
    ],
)
def test_a_drawn_digit_is_read(
    server_url: str, desktop: PageRecord, digit: int, strokes: list[list[Point]]
) -> None:
    page = desktop.page
    page.goto(f"{server_url}/")

    draw(page, strokes)
    wait_for_guess(page)

    expect(page.locator("#predicted-digit")).to_have_text(str(digit))
    expect(page.locator("#bars li.top .bar-digit")).to_have_text(str(digit))
    desktop.screenshot(f"02-drawn-{digit}")
    assert any("/predict?normalize=always" in url for url in desktop.requests)
    assert desktop.external_requests() == []
    assert desktop.console_errors == []
    assert desktop.page_errors == []


def test_the_pad_sends_an_opaque_image(server_url: str, desktop: PageRecord) -> None:
    # A transparent background would reach the server as "no ink" or as the wrong polarity.
    page = desktop.page
    page.goto(f"{server_url}/")
    draw(page, ONE)
    wait_for_guess(page)

    data_url = page.locator("#pad").evaluate("pad => pad.toDataURL('image/png')")
    drawing = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGBA")
    alpha = np.asarray(drawing)[..., 3]
    gray = np.asarray(drawing.convert("L"))
    assert alpha.min() == 255
    assert gray.min() == 0
    assert gray.max() == 255


@pytest.fixture(scope="module")
def postal_photo(
    server_url: str,
    mnist_test_digits: tuple[np.ndarray, np.ndarray],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """A PNG of POSTAL_CODE written with MNIST test digits, which the service itself reads right."""
    images, labels = mnist_test_digits
    photo = postal_code_png(clear_digits(server_url, images, labels, POSTAL_CODE), POSTAL_CODE)
    answer = httpx.post(
        f"{server_url}/recognize", files={"file": ("code.png", photo, "image/png")}, timeout=30.0
    ).json()
    assert answer["digits"] == POSTAL_CODE, f"the service itself read {answer}"
    path = tmp_path_factory.mktemp("postal") / "postal-code.png"
    path.write_bytes(photo)
    return path


def test_a_postal_code_photo_is_read_with_boxes(
    server_url: str, desktop: PageRecord, postal_photo: Path
) -> None:
    answer = httpx.post(
        f"{server_url}/recognize",
        files={"file": ("code.png", postal_photo.read_bytes(), "image/png")},
        timeout=30.0,
    ).json()
    page = desktop.page
    page.goto(f"{server_url}/")
    page.get_by_label("Choose an image").set_input_files(postal_photo)

    expect(page.locator("#reading")).to_have_attribute("data-state", "done")
    expect(page.locator("#read-digits")).to_have_text(POSTAL_CODE)
    expect(page.locator("#segments tr")).to_have_count(len(POSTAL_CODE))
    expect(page.locator("#segments tr td:nth-child(2)")).to_have_text(list(POSTAL_CODE))
    expect(page.locator("#preview-caption")).to_contain_text(f"{len(POSTAL_CODE)} digits found")
    expect(page.locator("#review" if answer["needs_review"] else "#review-ok")).to_be_visible()
    # The boxes are drawn in orange over a grayscale photo: count the orange pixels.
    box_pixels = page.locator("#preview").evaluate(COUNT_BOX_PIXELS)
    assert box_pixels > 100 * len(POSTAL_CODE)
    desktop.screenshot("03-postal-code")
    assert desktop.external_requests() == []
    assert desktop.console_errors == []
    assert desktop.page_errors == []


# Pixels of the dashed blue outline the page draws around a mark left out of the reading.
IGNORED_PIXEL = "(r, g, b) => r < 90 && g > 120 && g < 200 && b > 220"

COUNT_IGNORED_PIXELS = f"""canvas => {{
    const isIgnored = {IGNORED_PIXEL};
    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let count = 0;
    for (let i = 0; i < data.length; i += 4) {{
        if (isIgnored(data[i], data[i + 1], data[i + 2])) count += 1;
    }}
    return count;
}}"""

# The share of the columns across a mark's box, in canvas pixels, with its outline's colour on
# the row of the box's top edge (within 2 pixels): dashes cover about 60 % of an outline.
OUTLINE_COVERAGE = f"""(canvas, box) => {{
    const isIgnored = {IGNORED_PIXEL};
    const g = canvas.getContext("2d");
    const scale = canvas.width / box.imageWidth;
    const top = canvas.height - Math.round(box.imageHeight * scale);
    const y = Math.round(top + box.y * scale);
    const x0 = Math.round(box.x * scale);
    const x1 = Math.min(canvas.width, Math.round((box.x + box.width) * scale));
    const data = g.getImageData(x0, y - 2, x1 - x0, 5).data;
    let covered = 0;
    for (let column = 0; column < x1 - x0; column += 1) {{
        for (let row = 0; row < 5; row += 1) {{
            const i = 4 * (row * (x1 - x0) + column);
            if (isIgnored(data[i], data[i + 1], data[i + 2])) {{ covered += 1; break; }}
        }}
    }}
    return covered / (x1 - x0);
}}"""


def ruled_postal_code_png() -> bytes:
    """README's example postal code (75011) on a form: a ruled line just under the digits."""
    image = Image.open(REPO_ROOT / "examples" / "postal-code.png").convert("L")
    pixels = np.asarray(image).copy()
    ink = np.flatnonzero((pixels < 128).any(axis=1))
    below = int(ink.max()) + 8
    assert below + 3 < pixels.shape[0], "no room under the digits for a line"
    pixels[below : below + 3, :] = 40
    return png_bytes(pixels)


def test_marks_left_out_are_drawn_apart_from_the_digits(
    server_url: str, desktop: PageRecord, tmp_path: Path
) -> None:
    photo = ruled_postal_code_png()
    answer = httpx.post(
        f"{server_url}/recognize", files={"file": ("form.png", photo, "image/png")}, timeout=30.0
    ).json()
    lines = [mark for mark in answer["ignored"] if mark["kind"] == "ruled_line"]
    assert len(lines) == 1, f"the service itself did not find the one ruled line: {answer}"
    path = tmp_path / "form.png"
    path.write_bytes(photo)
    page = desktop.page
    page.goto(f"{server_url}/")
    page.get_by_label("Choose an image").set_input_files(path)

    expect(page.locator("#reading")).to_have_attribute("data-state", "done")
    expect(page.locator("#read-digits")).to_have_text(answer["digits"])
    expect(page.locator("#ignored")).to_be_visible()
    expect(page.locator('#ignored-marks li[data-kind="ruled_line"]')).to_have_text("1 ruled line")
    expect(page.locator("#ignored-marks li")).to_have_count(
        len({mark["kind"] for mark in answer["ignored"]})
    )
    expect(page.locator("#ignored-legend")).to_be_visible()
    expect(page.locator("#preview-caption")).to_contain_text(f"{len(answer['ignored'])} other mark")
    # The line's box is outlined where the line is, in its own colour; the digits keep theirs.
    preview = page.locator("#preview")
    box = {**lines[0]["box"], "imageWidth": answer["image"]["width"]}
    box["imageHeight"] = answer["image"]["height"]
    assert preview.evaluate(OUTLINE_COVERAGE, box) > 0.4
    assert preview.evaluate(COUNT_BOX_PIXELS) > 100 * len(answer["digits"])
    desktop.screenshot("08-marks-left-out")

    # The same code without the line: nothing is left out, so nothing is drawn in that colour.
    clean = tmp_path / "clean.png"
    clean.write_bytes((REPO_ROOT / "examples" / "postal-code.png").read_bytes())
    plain = httpx.post(
        f"{server_url}/recognize",
        files={"file": ("clean.png", clean.read_bytes(), "image/png")},
        timeout=30.0,
    ).json()
    assert plain["ignored"] == [], f"the service left marks out of the clean example: {plain}"
    page.get_by_label("Choose an image").set_input_files(clean)
    expect(page.locator("#preview-caption")).to_contain_text("clean.png")
    expect(page.locator("#ignored")).to_be_hidden()
    expect(page.locator("#ignored-legend")).to_be_hidden()
    assert preview.evaluate(COUNT_IGNORED_PIXELS) == 0
    assert desktop.console_errors == []
    assert desktop.page_errors == []


def test_a_wrong_expected_length_flags_the_reading_for_review(
    server_url: str, desktop: PageRecord, postal_photo: Path
) -> None:
    expected = len(POSTAL_CODE) - 1
    answer = httpx.post(
        f"{server_url}/recognize",
        params={"expected_length": expected},
        files={"file": ("code.png", postal_photo.read_bytes(), "image/png")},
        timeout=30.0,
    ).json()
    assert answer["needs_review"] is True
    page = desktop.page
    page.goto(f"{server_url}/")
    page.get_by_label("Choose an image").set_input_files(postal_photo)
    expect(page.locator("#reading")).to_have_attribute("data-state", "done")

    page.get_by_label("Expected number of digits").fill(str(expected))
    page.get_by_label("Expected number of digits").press("Enter")

    expect(page.locator("#review")).to_be_visible()
    expect(page.locator("#review-reasons li")).to_have_text(
        [r["message"] for r in answer["review_reasons"]]
    )
    expect(page.locator("#review-ok")).to_be_hidden()
    expect(page.locator("#read-digits")).to_have_text(POSTAL_CODE)
    desktop.screenshot("04-needs-review")
    assert any(f"expected_length={expected}" in url for url in desktop.requests)
    assert desktop.console_errors == []
    assert desktop.page_errors == []


def test_a_dropped_digit_is_read(
    server_url: str, desktop: PageRecord, mnist_test_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = mnist_test_digits
    (digit,) = clear_digits(server_url, images, labels, "3")
    page = desktop.page
    page.goto(f"{server_url}/")

    page.locator("#drop-zone").evaluate(
        """(zone, encoded) => {
            const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
            const files = new DataTransfer();
            files.items.add(new File([bytes], "three.png", { type: "image/png" }));
            const init = { dataTransfer: files, bubbles: true, cancelable: true };
            zone.dispatchEvent(new DragEvent("drop", init));
        }""",
        base64.b64encode(png_bytes(digit)).decode("ascii"),
    )

    expect(page.locator("#reading")).to_have_attribute("data-state", "done")
    expect(page.locator("#read-digits")).to_have_text("3")
    expect(page.locator("#segments tr")).to_have_count(1)
    desktop.screenshot("05-dropped-digit")
    assert desktop.page_errors == []


def test_an_upload_that_is_not_an_image_shows_the_service_message(
    server_url: str, desktop: PageRecord, tmp_path: Path
) -> None:
    content = b"Dear reader, this is a letter, not a picture of one.\n"
    refusal = httpx.post(
        f"{server_url}/recognize", files={"file": ("letter.txt", content, "text/plain")}
    )
    assert 400 <= refusal.status_code < 500
    message = refusal.json()["error"]["message"]
    assert message
    path = tmp_path / "letter.txt"
    path.write_bytes(content)

    page = desktop.page
    page.goto(f"{server_url}/")
    page.get_by_label("Choose an image").set_input_files(path)

    error = page.get_by_role("alert").filter(has_text=message)
    expect(error).to_be_visible()
    expect(error).to_have_text(message)
    expect(page.locator("#reading")).to_be_hidden()
    desktop.screenshot("06-not-an-image")
    # The refused upload itself is logged by chromium as a failed resource; nothing else may be.
    assert desktop.page_errors == []
    assert all("status of 4" in text for text in desktop.console_errors)


def test_the_page_fits_a_phone_and_a_finger_draws_without_scrolling(
    server_url: str, phone: PageRecord
) -> None:
    page = phone.page
    page.goto(f"{server_url}/")
    viewport_width = page.evaluate("window.innerWidth")
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport_width
    pad = page.locator("#pad").bounding_box()
    assert pad is not None
    assert pad["x"] >= 0
    assert pad["x"] + pad["width"] <= viewport_width

    # Upwards, the way a swipe would scroll the page down if the pad let it.
    draw_with_finger(page, [(0.47 + 0.06 * k / 12, 0.82 - 0.64 * k / 12) for k in range(13)])
    wait_for_guess(page)
    expect(page.locator("#predicted-digit")).to_have_text("1")
    assert page.evaluate("window.scrollY") == 0
    phone.screenshot("07-phone")
    assert phone.console_errors == []
    assert phone.page_errors == []


def test_clear_works_from_the_keyboard(server_url: str, desktop: PageRecord) -> None:
    page = desktop.page
    page.goto(f"{server_url}/")
    draw(page, ONE)
    wait_for_guess(page)
    expect(page.locator("#predicted-digit")).to_have_text("1")

    for _ in range(10):
        if page.evaluate("document.activeElement.id") == "clear":
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "clear", "Clear is not reachable by Tab"
    page.keyboard.press("Enter")

    expect(page.locator("#prediction")).to_have_attribute("data-state", "idle")
    expect(page.locator("#predicted-digit")).to_have_text("–")
    ink = page.locator("#pad").evaluate(
        """pad => {
            const data = pad.getContext("2d").getImageData(0, 0, pad.width, pad.height).data;
            let lit = 0;
            for (let i = 0; i < data.length; i += 4) if (data[i] > 0) lit += 1;
            return lit;
        }"""
    )
    assert ink == 0
    assert desktop.console_errors == []
    assert desktop.page_errors == []
