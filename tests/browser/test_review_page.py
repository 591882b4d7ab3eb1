"""The reviewers' page (``GET /review``) in a real headless chromium against the real service.

The server runs with a fresh SQLite queue, a reviewer key and every reading queued
(``DIGITS_REVIEW_AUDIT_SHARE=1``); each test sends its own images through ``/recognize``, keys
them on the page with the keyboard as a reviewer would, and checks what the queue stored through
the API. Before each test the queue is emptied, and every test leaves its pages, which gives
back what they hold: an item left claimed would fail the next test. Screenshots land in
``artifacts/screenshots/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from harness.servers import RunningServer
from tests.browser.conftest import READY_WAIT_SECONDS
from tests.browser.support import REPO_ROOT, PageRecord, open_page

pytestmark = pytest.mark.browser

REVIEWER_KEY = "reviewer-key-for-the-browser-tests"
SERVER_LOG = REPO_ROOT / "artifacts" / "browser-review-server.log"
POSTAL_CODE = (REPO_ROOT / "examples" / "postal-code.png").read_bytes()
ONE_DIGIT = (REPO_ROOT / "examples" / "digit-7.png").read_bytes()
# Every digit below this confidence flags the reading, with a reason naming its position.
FLAG_EVERYTHING = 1.0
# Long enough to press a key in, short enough to wait out in a test.
SHORT_LEASE_SECONDS = 6.0
# A bound on waiting for the page (a busy 2-core machine), not a speed check.
SETTLE_SECONDS = 20.0

# Records every Content-Security-Policy violation the page meets; run before the page's script.
CSP_WATCH = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.cspViolations.push(`${event.violatedDirective} ${event.blockedURI}`);
});
"""


@dataclass
class Queue:
    """The review server and a client holding the reviewer key."""

    url: str
    api: httpx.Client

    def seed(
        self,
        image: bytes = POSTAL_CODE,
        *,
        threshold: float | None = FLAG_EVERYTHING,
        **params: Any,
    ) -> dict[str, Any]:
        """Read ``image`` with /recognize (queued, as every reading is here); return the answer."""
        if threshold is not None:
            params["threshold"] = threshold
        answer = httpx.post(
            f"{self.url}/recognize",
            params=params,
            files={"file": ("scan.png", image, "image/png")},
            timeout=60.0,
        ).json()
        assert answer.get("review_id"), f"the reading was not queued: {answer}"
        assert answer["queue"] in {"queued", "audit"}, answer
        return dict(answer)

    def item(self, review_id: str) -> dict[str, Any]:
        response = self.api.get(f"/reviews/{review_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def stats(self) -> dict[str, Any]:
        response = self.api.get("/reviews/stats")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def drain(self) -> None:
        """Key everything waiting as unreadable (a reviewer of the tests' own)."""
        while True:
            claimed = self.api.post("/reviews/claim", json={"reviewer": "drain"})
            if claimed.status_code == 204:
                return
            assert claimed.status_code == 200, claimed.text
            body = claimed.json()
            done = self.api.post(
                f"/reviews/{body['review_id']}",
                json={"lease": body["lease"], "reviewer": "drain", "verdict": "unreadable"},
            )
            assert done.status_code == 200, done.text

    def wait_until_nothing_is_claimed(self) -> None:
        wait_for(lambda: self.stats()["claimed"] == 0, "items are still claimed")


def waiting(stats: dict[str, Any]) -> int:
    """Items a claim would hand out (pending, or claimed under a lease that ran out)."""
    return int(stats["waiting"])


def percent(value: float) -> str:
    """A confidence as the page writes it: one decimal, never rounded up to a certainty."""
    text = f"{value * 100:.1f}"
    return "> 99.9 %" if value < 1 and float(text) >= 100 else f"{text} %"


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` for up to SETTLE_SECONDS."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.fixture(scope="module")
def review_server(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """The service with a fresh SQLite queue and a reviewer key, every reading queued."""
    env = {
        "DIGITS_DATA_DIR": str(tmp_path_factory.mktemp("review-data")),
        "DIGITS_REVIEWER_API_KEY": REVIEWER_KEY,
        "DIGITS_REVIEW_AUDIT_SHARE": "1",
    }
    server = RunningServer.start(models_dir, SERVER_LOG, env=env, ready_timeout=READY_WAIT_SECONDS)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def queue(review_server: RunningServer) -> Iterator[Queue]:
    """An empty queue: whatever an earlier test left is keyed away first."""
    with httpx.Client(
        base_url=review_server.url, headers={"X-API-Key": REVIEWER_KEY}, timeout=30.0
    ) as api:
        ready = Queue(review_server.url, api)
        ready.wait_until_nothing_is_claimed()
        ready.drain()
        assert waiting(ready.stats()) == 0
        yield ready


@pytest.fixture
def short_lease_queue(models_dir: Path, tmp_path: Path) -> Iterator[Queue]:
    """A server of its own whose claims hold an item for SHORT_LEASE_SECONDS only."""
    env = {
        "DIGITS_DATA_DIR": str(tmp_path / "data"),
        "DIGITS_REVIEWER_API_KEY": REVIEWER_KEY,
        "DIGITS_REVIEW_LEASE_SECONDS": str(SHORT_LEASE_SECONDS),
    }
    log = REPO_ROOT / "artifacts" / "browser-review-short-lease-server.log"
    server = RunningServer.start(models_dir, log, env=env, ready_timeout=READY_WAIT_SECONDS)
    try:
        with httpx.Client(
            base_url=server.url, headers={"X-API-Key": REVIEWER_KEY}, timeout=30.0
        ) as api:
            yield Queue(server.url, api)
    finally:
        server.stop()


def watched(record: PageRecord) -> PageRecord:
    record.page.add_init_script(CSP_WATCH)
    return record


@pytest.fixture
def alice(browser: Browser) -> Iterator[PageRecord]:
    """A reviewer's browser at a laptop's size."""
    for record in open_page(browser, 1280, 900):
        yield watched(record)


@pytest.fixture
def bob(browser: Browser) -> Iterator[PageRecord]:
    """A second reviewer, in a browser context of their own (own session storage)."""
    for record in open_page(browser, 1280, 900):
        yield watched(record)


@pytest.fixture
def phone_reviewer(browser: Browser) -> Iterator[PageRecord]:
    """A reviewer on a small touch-screen phone held upright."""
    for record in open_page(browser, 375, 740, touch=True):
        yield watched(record)


def open_review_page(record: PageRecord, queue: Queue) -> None:
    response = record.page.goto(f"{queue.url}/review")
    assert response is not None
    assert response.status == 200
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "unsafe-inline" not in policy


def sign_in(page: Page, name: str, key: str = REVIEWER_KEY) -> None:
    """Answer the page's question for a name and the key, with the keyboard."""
    expect(page.get_by_label("Your name")).to_be_visible()
    page.get_by_label("Your name").fill(name)
    page.get_by_label("Reviewer key").fill(key)
    page.get_by_label("Reviewer key").press("Enter")


def shown_id(page: Page) -> str:
    expect(page.locator("#work")).to_be_visible()
    return str(page.locator("#work").get_attribute("data-review-id"))


def expect_item(page: Page, review_id: str) -> None:
    """The item on screen is ``review_id``, ready to key: its image shown, the field focused."""
    expect(page.locator("#work")).to_be_visible()
    expect(page.locator("#work")).to_have_attribute("data-review-id", review_id)
    expect(page.locator("#answer")).to_be_focused()
    assert page.locator("#item-image").evaluate("image => image.complete && image.naturalWidth") > 0


def expect_next_item(page: Page, previous: str) -> str:
    """Wait until the page shows another item than ``previous``, or says nothing waits."""
    expect(page.locator(f'#work:not([hidden])[data-review-id="{previous}"]')).to_have_count(0)
    expect(page.locator("#work:not([hidden]), #idle:not([hidden])")).to_have_count(1)
    if page.locator("#idle").is_visible():
        return ""
    return shown_id(page)


def leave(records: list[PageRecord], queue: Queue) -> None:
    """Leave the pages (they give back what they hold) and check that they kept to the rules."""
    for record in records:
        record.page.goto("about:blank")
    queue.wait_until_nothing_is_claimed()


def assert_clean(record: PageRecord, *, refused: bool = False) -> None:
    """No script error, no request elsewhere, no policy violation; ``refused``: the page met
    4xx answers on purpose, which chromium logs as failed resources (and only those)."""
    violations = record.page.evaluate("window.cspViolations || []")
    assert violations == []
    assert record.page_errors == []
    assert record.external_requests() == []
    if refused:
        assert all("status of 4" in text for text in record.console_errors), record.console_errors
    else:
        assert record.console_errors == []


# ------------------------------------------------------------------------------------------- tests


def test_a_full_keying_round(queue: Queue, alice: PageRecord) -> None:
    first = queue.seed()
    second = queue.seed(ONE_DIGIT)
    third = queue.seed(threshold=None)
    ids = [answer["review_id"] for answer in (first, second, third)]
    page = alice.page
    open_review_page(alice, queue)

    # The page asks once for a name and the key; the name field has the focus.
    expect(page.get_by_label("Your name")).to_be_focused()
    expect(page.locator("#work")).to_be_hidden()
    sign_in(page, "alice")

    # The oldest item, with its image, a box over each digit, each digit's confidence, the
    # reasons and the reading, selected so that typing replaces it.
    expect_item(page, ids[0])
    item = queue.item(ids[0])
    assert item["status"] == "claimed"
    segments = item["reading"]["segments"]
    expect(page.locator("#boxes .box")).to_have_count(len(segments))
    expect(page.locator("#digit-list li .digit-char")).to_have_text(
        [str(segment["digit"]) for segment in segments]
    )
    expect(page.locator("#digit-list li .digit-confidence")).to_have_text(
        [percent(segment["confidence"]) for segment in segments]
    )
    expect(page.locator("#reasons li")).to_have_text(
        [reason["message"] for reason in first["review_reasons"]]
    )
    assert first["review_reasons"], "every digit below a threshold of 1 flags the reading"
    # The digits a reason names (counted from 1) have boxes of their own colour.
    named = sorted(
        {reason["position"] - 1 for reason in first["review_reasons"] if reason["position"]}
    )
    flagged = page.locator("#boxes .box.flagged")
    expect(flagged).to_have_count(len(named))
    assert [
        int(str(flagged.nth(i).get_attribute("data-position"))) for i in range(len(named))
    ] == named
    expect(page.locator("#answer")).to_have_value(first["digits"])
    selection = "field => [field.selectionStart, field.selectionEnd]"
    assert page.locator("#answer").evaluate(selection) == [0, len(first["digits"])]
    assert_boxes_sit_on_their_digits(page, segments, first["image"])
    alice.screenshot("review-01-first-item")

    # The counts: three items, one on this screen and one fetched ahead, none keyed.
    before = queue.stats()
    expect(page.locator("#count-waiting")).to_have_text(str(waiting(before)))
    expect(page.locator("#count-done")).to_have_text(str(before["done"]))

    # A correction typed over the selection, then Enter: the next item at once.
    page.keyboard.type("12345")
    page.keyboard.press("Enter")
    expect_item(page, ids[1])
    expect(page.locator("#answer")).to_have_value(second["digits"])
    expect(page.locator("#count-mine")).to_have_text("1")
    expect(page.locator("#count-done")).to_have_text(str(before["done"] + 1))
    expect(page.locator("#status")).to_contain_text("12345")

    # The reading was right: Enter alone keeps it.
    page.keyboard.press("Enter")
    expect_item(page, ids[2])
    expect(page.locator("#audit-note")).to_be_visible()
    expect(page.locator("#reasons-block")).to_be_hidden()
    page.keyboard.type(" 750 11 ")
    page.keyboard.press("Enter")

    expect(page.locator("#idle")).to_be_visible()
    expect(page.locator("#idle")).to_be_focused()
    expect(page.locator("#status")).to_contain_text("Nothing waiting")
    after = queue.stats()
    assert waiting(after) == 0
    assert after["claimed"] == 0
    assert after["done"] == before["done"] + 3
    expect(page.locator("#count-waiting")).to_have_text("0")
    expect(page.locator("#count-done")).to_have_text(str(after["done"]))
    expect(page.locator("#count-mine")).to_have_text("3")
    alice.screenshot("review-02-nothing-waiting")

    results = [queue.item(review_id) for review_id in ids]
    assert [result["status"] for result in results] == ["done"] * 3
    assert [result["reviewer"] for result in results] == ["alice"] * 3
    assert [result["result"]["verdict"] for result in results] == ["digits"] * 3
    keyed = [result["result"]["digits"] for result in results]
    assert keyed == ["12345", second["digits"], "75011"]
    assert results[0]["result"]["reading_was_correct"] is (first["digits"] == "12345")
    assert results[1]["result"]["reading_was_correct"] is True

    # A new reading arrives while the page waits: it shows up without a key pressed.
    late = queue.seed()
    expect_item(page, late["review_id"])
    leave([alice], queue)
    assert queue.item(late["review_id"])["status"] == "pending"
    assert_clean(alice)


def assert_boxes_sit_on_their_digits(
    page: Page, segments: list[dict[str, Any]], size: dict[str, int]
) -> None:
    """Each box on the page covers its digit's box in the image, scaled to the shown size."""
    image = page.locator("#item-image").bounding_box()
    assert image is not None
    scale = image["width"] / size["width"]
    assert image["height"] / size["height"] == pytest.approx(scale, rel=0.01)
    for index, segment in enumerate(segments):
        shown = page.locator(f'#boxes .box[data-position="{index}"]').bounding_box()
        assert shown is not None
        box = segment["box"]
        assert shown["x"] - image["x"] == pytest.approx(box["x"] * scale, abs=2)
        assert shown["y"] - image["y"] == pytest.approx(box["y"] * scale, abs=2)
        assert shown["width"] == pytest.approx(box["width"] * scale, abs=2)
        assert shown["height"] == pytest.approx(box["height"] * scale, abs=2)


def test_skip_unreadable_and_not_digits_keys(queue: Queue, alice: PageRecord) -> None:
    ids = [queue.seed()["review_id"] for _ in range(3)]
    page = alice.page
    open_review_page(alice, queue)
    sign_in(page, "alice")
    expect_item(page, ids[0])

    # Escape: the item goes back to the queue, another one shows at once.
    page.keyboard.press("Escape")
    expect_item(page, ids[1])
    expect(page.locator("#status")).to_contain_text("Skipped")
    wait_for(lambda: queue.item(ids[0])["status"] == "pending", "the skipped item is not back")

    page.keyboard.press("Alt+U")
    expect_item(page, ids[2])
    page.keyboard.press("Alt+N")

    # Only the skipped item waits: the page does not hand it back unasked.
    expect(page.locator("#idle")).to_be_visible()
    expect(page.locator("#idle-title")).to_have_text("Nothing else waiting")
    assert queue.item(ids[0])["status"] == "pending"
    alice.screenshot("review-03-only-skipped")
    expect(page.get_by_role("button", name="Show the items I skipped")).to_be_focused()
    page.keyboard.press("Enter")
    expect_item(page, ids[0])
    page.keyboard.press("Enter")
    expect(page.locator("#idle-title")).to_have_text("Nothing waiting")

    results = [queue.item(review_id)["result"] for review_id in ids]
    assert [result["verdict"] for result in results] == ["digits", "unreadable", "not_digits"]
    reading = queue.item(ids[0])["reading"]["digits"]
    assert [result["digits"] for result in results] == [reading, None, None]
    leave([alice], queue)
    assert_clean(alice)


def test_a_wrong_length_is_refused_and_the_item_kept(queue: Queue, alice: PageRecord) -> None:
    answer = queue.seed(expected_length=6)
    review_id = answer["review_id"]
    page = alice.page
    open_review_page(alice, queue)
    sign_in(page, "alice")
    expect_item(page, review_id)
    expect(page.locator("#answer-hint")).to_have_text("The request asked for 6 digits.")
    expect(page.locator("#reasons li")).to_have_text(
        [reason["message"] for reason in answer["review_reasons"]]
    )

    page.keyboard.type("75011")
    page.keyboard.press("Enter")

    error = page.locator("#answer-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("6 digits")
    expect(page.get_by_role("alert").filter(has_text="6 digits")).to_be_visible()
    expect(page.locator("#answer")).to_have_attribute("aria-invalid", "true")
    expect_item(page, review_id)
    expect(page.locator("#answer")).to_have_value("75011")
    assert queue.item(review_id)["status"] == "claimed"
    alice.screenshot("review-04-wrong-length")

    page.keyboard.type("750110")
    page.keyboard.press("Enter")
    expect(page.locator("#idle")).to_be_visible()
    expect(error).to_be_hidden()
    assert queue.item(review_id)["result"]["digits"] == "750110"
    leave([alice], queue)
    assert_clean(alice, refused=True)


def test_a_single_digit_from_predict_is_keyed_without_boxes(
    queue: Queue, alice: PageRecord
) -> None:
    answer = httpx.post(
        f"{queue.url}/predict",
        params={"queue": "true"},
        files={"file": ("digit.png", ONE_DIGIT, "image/png")},
        timeout=60.0,
    ).json()
    assert answer.get("review_id"), f"the reading was not queued: {answer}"
    page = alice.page
    open_review_page(alice, queue)
    sign_in(page, "alice")

    expect_item(page, answer["review_id"])
    expect(page.locator("#answer")).to_have_value(str(answer["digit"]))
    expect(page.locator("#digit-list li .digit-char")).to_have_text([str(answer["digit"])])
    expect(page.locator("#digit-list li .digit-confidence")).to_have_text(
        [percent(answer["confidence"])]
    )
    # /predict finds no boxes: the image is shown whole, nothing drawn over it.
    expect(page.locator("#boxes .box")).to_have_count(0)
    expect(page.locator("#item-meta")).to_contain_text("/predict")
    page.keyboard.press("Enter")
    expect(page.locator("#idle")).to_be_visible()
    assert queue.item(answer["review_id"])["result"]["digits"] == str(answer["digit"])
    leave([alice], queue)
    assert_clean(alice)


def test_an_item_deleted_meanwhile_is_left_for_the_next(queue: Queue, alice: PageRecord) -> None:
    gone, kept = (queue.seed()["review_id"] for _ in range(2))
    page = alice.page
    open_review_page(alice, queue)
    sign_in(page, "alice")
    expect_item(page, gone)

    # Deleted (a data-protection request, say) while the reviewer looks at it.
    assert queue.api.delete(f"/reviews/{gone}").status_code == 204
    page.keyboard.press("Enter")

    expect_item(page, kept)
    expect(page.locator("#status")).to_contain_text(f"There is no review item '{gone}'")
    expect(page.locator("#status")).to_contain_text("Going on to the next item")
    page.keyboard.press("Enter")
    expect(page.locator("#idle")).to_be_visible()
    assert queue.item(kept)["result"]["digits"] == "75011"
    leave([alice], queue)
    assert_clean(alice, refused=True)


def test_a_lease_that_ran_out_is_claimed_again(short_lease_queue: Queue, alice: PageRecord) -> None:
    queue = short_lease_queue
    review_id = queue.seed()["review_id"]
    page = alice.page
    open_review_page(alice, queue)
    sign_in(page, "alice")
    expect_item(page, review_id)
    page.keyboard.type("12345")

    # The reviewer thinks too long: the lease runs out before Enter.
    time.sleep(SHORT_LEASE_SECONDS + 0.5)
    page.keyboard.press("Enter")

    # Nobody took the item meanwhile: it is claimed again, with what was typed.
    expect(page.locator("#status")).to_contain_text("it is yours again")
    expect_item(page, review_id)
    expect(page.locator("#answer")).to_have_value("12345")
    page.keyboard.press("Enter")
    expect(page.locator("#idle")).to_be_visible()
    result = queue.item(review_id)
    assert (result["status"], result["result"]["digits"]) == ("done", "12345")
    leave([alice], queue)
    assert_clean(alice, refused=True)


def test_a_wrong_key_is_asked_for_again(queue: Queue, alice: PageRecord) -> None:
    review_id = queue.seed()["review_id"]
    page = alice.page
    open_review_page(alice, queue)

    sign_in(page, "alice", key="not-the-key")

    refusal = page.locator("#sign-in-error")
    expect(refusal).to_be_visible()
    expect(refusal).to_contain_text("Enter the reviewer key again")
    expect(page.get_by_label("Reviewer key")).to_be_focused()
    expect(page.get_by_label("Your name")).to_have_value("alice")
    expect(page.locator("#work")).to_be_hidden()
    assert queue.item(review_id)["status"] == "pending"
    alice.screenshot("review-05-wrong-key")

    page.get_by_label("Reviewer key").fill(REVIEWER_KEY)
    page.get_by_label("Reviewer key").press("Enter")
    expect_item(page, review_id)
    expect(refusal).to_be_hidden()

    # The name and the key stay for this tab: a reload goes straight on.
    page.reload()
    expect_item(page, review_id)
    leave([alice], queue)
    assert_clean(alice, refused=True)


def test_two_reviewers_key_one_queue_at_once(
    queue: Queue, alice: PageRecord, bob: PageRecord
) -> None:
    seeded = {queue.seed(image)["review_id"] for image in [POSTAL_CODE, ONE_DIGIT] * 5}
    pages = {"alice": alice.page, "bob": bob.page}
    for name, page in pages.items():
        open_review_page(alice if name == "alice" else bob, queue)
        sign_in(page, name)
    keyed: dict[str, list[str]] = {"alice": [], "bob": []}
    on_screen = {name: shown_id(page) for name, page in pages.items()}

    while any(on_screen.values()):
        showing = [review_id for review_id in on_screen.values() if review_id]
        assert len(showing) == len(set(showing)), f"both reviewers were shown {showing}"
        # Both press Enter before either page is waited for: their requests overlap.
        for name, page in pages.items():
            if on_screen[name]:
                keyed[name].append(on_screen[name])
                page.locator("#answer").press("Enter")
        for name, page in pages.items():
            if on_screen[name]:
                on_screen[name] = expect_next_item(page, on_screen[name])

    everything = keyed["alice"] + keyed["bob"]
    assert len(everything) == len(set(everything)), f"an item was keyed twice: {keyed}"
    assert set(everything) == seeded
    assert keyed["alice"]
    assert keyed["bob"]
    for name, review_ids in keyed.items():
        for review_id in review_ids:
            item = queue.item(review_id)
            assert (item["status"], item["reviewer"]) == ("done", name), item
    assert waiting(queue.stats()) == 0
    leave([alice, bob], queue)
    assert_clean(alice)
    assert_clean(bob)


def test_a_reviewer_keys_audit_samples_only(queue: Queue, alice: PageRecord) -> None:
    # Flagged readings first: every claim without a kind would hand them out before the audits.
    flagged = [queue.seed()["review_id"] for _ in range(2)]
    audit = [queue.seed(threshold=None)["review_id"] for _ in range(2)]
    assert [queue.item(review_id)["kind"] for review_id in flagged + audit] == [
        "flagged",
        "flagged",
        "audit",
        "audit",
    ]
    page = alice.page
    open_review_page(alice, queue)
    sign_in(page, "alice")
    expect_item(page, flagged[0])
    expect(page.get_by_role("radio", name="All")).to_be_checked()

    # With the keyboard: back from the field into the choice, arrows to Audit.
    page.keyboard.press("Shift+Tab")
    expect(page.get_by_role("radio", name="All")).to_be_focused()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("radio", name="Flagged")).to_be_checked()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("radio", name="Audit")).to_be_checked()
    # The flagged item on screen is given back for someone else; the oldest audit shows.
    expect(page.locator("#work")).to_have_attribute("data-review-id", audit[0])
    expect(page.locator("#work")).to_have_attribute("data-kind", "audit")
    expect(page.locator("#audit-note")).to_be_visible()
    expect(page.get_by_role("radio", name="Audit")).to_be_focused()
    assert page.evaluate("window.location.search") == "?kind=audit"
    wait_for(lambda: queue.item(flagged[0])["status"] == "pending", "the flagged item is held")
    # The item fetched ahead is the next audit, not the older flagged one.
    wait_for(lambda: queue.item(audit[1])["status"] == "claimed", "no audit fetched ahead")
    assert queue.item(flagged[1])["status"] == "pending"
    # The counts are the audit samples'.
    expect(page.locator("#count-scope")).to_have_text("Audit samples:")
    by_kind = queue.stats()["by_kind"]
    expect(page.locator("#count-waiting")).to_have_text(str(by_kind["audit"]["waiting"]))
    expect(page.locator("#count-claimed")).to_have_text(str(by_kind["audit"]["claimed"]))
    alice.screenshot("review-07-audit-only")

    # Enter in the choice goes back to keying.
    page.keyboard.press("Enter")
    expect_item(page, audit[0])
    page.keyboard.press("Enter")
    expect_item(page, audit[1])
    page.keyboard.press("Enter")

    # No audit left: said so, with what else waits.
    expect(page.locator("#idle")).to_be_visible()
    expect(page.locator("#idle-title")).to_have_text("No audit samples waiting")
    expect(page.locator("#status")).to_contain_text("No audit samples waiting")
    expect(page.locator("#idle-others")).to_have_text(
        "Also waiting: 2 flagged readings. Choose All to key them."
    )
    expect(page.locator("#count-waiting")).to_have_text("0")
    alice.screenshot("review-08-no-audit-waiting")
    assert [queue.item(review_id)["status"] for review_id in audit] == ["done", "done"]
    assert [queue.item(review_id)["status"] for review_id in flagged] == ["pending", "pending"]

    # The choice is in the address: a reload (or a link) keeps it.
    page.reload()
    expect(page.get_by_role("radio", name="Audit")).to_be_checked()
    expect(page.locator("#idle-title")).to_have_text("No audit samples waiting")
    # A new audit sample arrives while the page waits; a flagged one does not wake it.
    queue.seed()
    late = queue.seed(threshold=None)["review_id"]
    expect_item(page, late)
    page.keyboard.press("Enter")
    expect(page.locator("#idle-title")).to_have_text("No audit samples waiting")

    # Flagged, with the mouse: the flagged items, oldest first, the focus in the field.
    page.locator('label[for="kind-flagged"]').click()
    expect_item(page, flagged[0])
    expect(page.locator("#count-scope")).to_have_text("Flagged readings:")
    assert page.evaluate("window.location.search") == "?kind=flagged"
    page.locator('label[for="kind-all"]').click()
    expect(page.locator("#count-scope")).to_be_hidden()
    assert page.evaluate("window.location.search") == ""
    leave([alice], queue)
    assert_clean(alice)


def test_the_page_fits_a_phone(queue: Queue, phone_reviewer: PageRecord) -> None:
    review_id = queue.seed()["review_id"]
    page = phone_reviewer.page
    open_review_page(phone_reviewer, queue)
    sign_in(page, "alice")
    expect_item(page, review_id)

    width = page.evaluate("window.innerWidth")
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    for element in ["#stage", "#answer", "#save", "#not-digits"]:
        box = page.locator(element).bounding_box()
        assert box is not None, element
        assert box["x"] >= 0
        assert box["x"] + box["width"] <= width, element
    phone_reviewer.screenshot("review-06-phone")

    # The buttons do what the keys do, for a finger.
    page.get_by_role("button", name="Unreadable").tap()
    expect(page.locator("#idle")).to_be_visible()
    assert queue.item(review_id)["result"]["verdict"] == "unreadable"
    leave([phone_reviewer], queue)
    assert_clean(phone_reviewer)
