"""The built book in a real browser (Debian chromium driven by Python playwright).

The head explorer must stay interactive in the static book, served over http and opened from
``file://``, with every request staying on this machine. Never ``playwright install``: it
downloads a browser; the browser is Debian's (tools/ensure_browser.sh installs it).
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from book_fixtures import BuiltBook, built_book, tail  # noqa: F401 (fixture)

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
EXPLORER_PAGE = "generated/09_head_explorer.html"
TIMEOUT_MS = 60_000

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _require_browser() -> None:
    reason = ""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (run tools/ensure_browser.sh as root)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the playwright Python package is missing (pip install -e '.[book]')"
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI needs the real-browser tests: {reason}")
        pytest.skip(reason)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


@pytest.fixture(scope="module")
def site_url(built_book: BuiltBook) -> Iterator[str]:
    """The built site over http on 127.0.0.1 (a daemon thread, shut down after the module)."""
    if not built_book.html_dir.is_dir():
        pytest.fail(f"the book was not built:\n{tail(built_book.build_log)}")
    handler = functools.partial(_QuietHandler, directory=str(built_book.html_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS, timeout=TIMEOUT_MS)
        try:
            yield b
        finally:
            b.close()


def _is_local(url: str) -> bool:
    parsed = urlparse(url)
    if parsed.scheme in ("file", "data", "blob", "about"):
        return True
    return parsed.scheme in ("http", "https") and parsed.hostname in ("127.0.0.1", "localhost")


class _Page:
    """A page with every request and script error recorded."""

    def __init__(self, browser: object) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 1000})
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.context.on("request", lambda r: self.requests.append(r.url))
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.set_default_timeout(TIMEOUT_MS)

    def outside(self) -> list[str]:
        return [u for u in self.requests if not _is_local(u)]

    def close(self) -> None:
        self.context.close()


# Content digests of the composites on show: an <img>'s blob URL is not an identity (a view
# may re-create it on every re-render), its bytes are.
_DIGESTS_JS = """async () => {
  const shown = [...document.querySelectorAll('.iav-explorer img')].filter(e => e.offsetParent !== null);
  const out = [];
  for (const img of shown) {
    const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
    let h = 0;
    for (let i = 0; i < bytes.length; i++) { h = (Math.imul(h, 31) + bytes[i]) >>> 0; }
    out.push(bytes.length + ':' + h);
  }
  return out;
}"""


def _shown(page: object) -> list[str]:
    """Digests of the composite images visible now (one per model in the explorer)."""
    return page.evaluate(_DIGESTS_JS)


def _wait_until(page: object, predicate: object, what: str, timeout_s: float = 20.0) -> list[str]:
    """Poll :func:`_shown` until ``predicate(digests)`` holds; return the digests."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        now = _shown(page)
        if predicate(now):
            return now
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: shown images {now}")
        page.wait_for_timeout(100)


def _press(page: object, slider_class: str, key: str, times: int = 1) -> str:
    handle = page.locator(f".{slider_class} .noUi-handle").first
    handle.focus()
    for _ in range(times):
        page.keyboard.press(key)
    return page.locator(f".{slider_class} .widget-readout").first.inner_text().strip()


def _exercise_explorer(browser: object, url: str, screenshot: Path | None = None) -> None:
    p = _Page(browser)
    try:
        p.page.goto(url, wait_until="load")
        p.page.wait_for_selector(".iav-layer-slider .noUi-handle", state="visible")
        p.page.wait_for_selector(".iav-explorer img", state="visible")
        start = _shown(p.page)
        assert start, "the explorer shows no image"

        assert _press(p.page, "iav-layer-slider", "ArrowRight") == "2"  # layers count from 1
        after_layer = _wait_until(
            p.page, lambda now: len(now) == len(start) and all(a != b for a, b in zip(now, start)),
            "moving the layer slider must change every model's map")

        assert _press(p.page, "iav-head-slider", "ArrowRight") == "1"  # heads from 0
        after_head = _wait_until(
            p.page, lambda now: len(now) == len(start) and all(a != b for a, b in zip(now, after_layer)),
            "moving the head slider must change every model's map")
        assert after_head != start
        # What is shown is drawn (decoded, non-empty), not a broken link.
        widths = p.page.eval_on_selector_all(
            ".iav-explorer img", "els => els.filter(e => e.offsetParent !== null).map(e => e.naturalWidth)")
        assert all(w > 50 for w in widths), widths

        # Back at layer 1, head 0 the first images return: the sliders select pre-rendered
        # views, nothing is recomputed (there is no kernel).
        _press(p.page, "iav-layer-slider", "ArrowLeft")
        _press(p.page, "iav-head-slider", "ArrowLeft")
        _wait_until(p.page, lambda now: now == start, "back at layer 1, head 0 the first images must return")
        if screenshot is not None:
            _press(p.page, "iav-layer-slider", "ArrowRight", 2)
            _press(p.page, "iav-head-slider", "ArrowRight", 1)
            p.page.wait_for_timeout(300)
            p.page.locator(".iav-explorer").first.screenshot(path=str(screenshot))
        assert p.errors == [], p.errors
        assert p.outside() == [], f"requests left the machine: {p.outside()}"
    finally:
        p.close()


def test_explorer_over_http(browser: object, site_url: str, built_book: BuiltBook) -> None:
    _exercise_explorer(browser, f"{site_url}/{EXPLORER_PAGE}",
                       screenshot=built_book.root / "explorer-http.png")


def test_explorer_from_file_url(browser: object, built_book: BuiltBook) -> None:
    page = built_book.html_dir / EXPLORER_PAGE
    assert page.exists(), tail(built_book.build_log)
    _exercise_explorer(browser, page.as_uri(), screenshot=built_book.root / "explorer-file.png")


def test_math_renders_offline(browser: object, built_book: BuiltBook) -> None:
    p = _Page(browser)
    try:
        p.page.goto((built_book.html_dir / "intro.html").as_uri(), wait_until="load")
        p.page.wait_for_selector("mjx-container", state="attached")
        assert p.outside() == [], f"requests left the machine: {p.outside()}"
    finally:
        p.close()
