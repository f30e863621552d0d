"""The gallery at ``/`` driven in Debian's chromium (Playwright): sign in with a key, upload through the
page, follow the job live to its end, see the cut-out, open the job page; a wrong key shows an error and
no jobs; the polling fallback where the events endpoint is missing; the page's own SSE parser.

Playwright cannot download its browsers here, so it drives the system chromium, which the project's
set-up installs (`make browsers`, a prerequisite of `make test`).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, Route, async_playwright, expect

from rmbg.demo import sample_bytes
from tests.e2e.conftest import Pipeline

pytestmark = pytest.mark.slow

# Generous: the first job of a session also waits for the consumers to join their groups.
JOB_TIMEOUT_MS = 120_000


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        # A failure, not a skip: a suite that silently stops testing the page would look green.
        pytest.fail(
            "chromium is not installed: run the project's set-up (`make test` runs `make browsers`, which "
            "installs Debian's chromium package with apt-get)",
            pytrace=False,
        )
    return path


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    # The sandbox cannot start as root (containers, CI); /dev/shm is small in containers.
    args = ["--disable-dev-shm-usage", *(["--no-sandbox"] if os.geteuid() == 0 else [])]
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=_chromium(), headless=True, args=args)
        try:
            yield launched
        finally:
            await launched.close()


class PageProblems:
    """Uncaught errors and console errors (a CSP violation, a failed module, a failed load) the page met,
    except the 404s of endpoints the page is allowed to find missing."""

    # A job without a callback_url has no webhook: its webhooks endpoint answers 404, the page says "none".
    def __init__(self, page: Page, *, may_be_missing: str = r"/v1/jobs/[^/]+/webhooks$") -> None:
        self.errors: list[str] = []
        self.may_be_missing = re.compile(may_be_missing)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("console", self._console)

    def _console(self, msg: ConsoleMessage) -> None:
        url = msg.location.get("url", "")
        if msg.type != "error" or ("404" in msg.text and self.may_be_missing.search(url)):
            return
        self.errors.append(f"console: {msg.text} ({url})")


async def _open(browser: Browser, pipeline: Pipeline, **problems_kw: str) -> tuple[Page, PageProblems]:
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    problems = PageProblems(page, **problems_kw)
    await page.goto(f"{pipeline.api_url}/")
    return page, problems


async def _sign_in(page: Page, key: str, user_id: str) -> None:
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#whoami")).to_contain_text(user_id)
    await expect(page.locator("#gallery-view")).to_be_visible()


async def _image_loaded(page: Page, selector: str) -> None:
    await page.wait_for_function(
        "(sel) => { const img = document.querySelector(sel); return !!img && img.complete && img.naturalWidth > 0; }",
        arg=selector,
        timeout=30_000,
    )


async def test_upload_follow_and_job_page(
    pipeline: Pipeline, browser: Browser, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user_id = f"gallery-{secrets.token_hex(4)}"
    key = await pipeline.key(user_id)
    page, problems = await _open(browser, pipeline)
    events_answers: list[int] = []
    page.on("response", lambda r: events_answers.append(r.status) if r.url.endswith("/events") else None)

    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await _sign_in(page, key, user_id)
    await expect(page.locator("#jobs-empty")).to_be_visible()  # a new user has no jobs yet

    image = tmp_path / "astronaut.png"
    image.write_bytes(sample_bytes("astronaut.png"))
    await page.get_by_label("Tags").fill("gallery, Astronaut")
    await page.locator("#files").set_input_files(image)

    upload = page.locator("#uploads li.upload")
    await expect(upload).to_have_count(1)
    await expect(upload).to_have_attribute("data-status", "completed", timeout=JOB_TIMEOUT_MS)
    job_id = await upload.get_attribute("data-job-id")
    assert job_id

    tile = page.locator(f'#grid li.tile[data-job-id="{job_id}"]')
    await expect(tile).to_have_attribute("data-status", "completed")
    await expect(tile.locator(".badge")).to_have_text("completed")
    await expect(tile.locator(".tags li")).to_have_text(["astronaut", "gallery"])
    await _image_loaded(page, f'#grid li[data-job-id="{job_id}"] img[data-kind="cutout"]')
    await _image_loaded(page, f'#grid li[data-job-id="{job_id}"] img[data-kind="original"]')
    grid_shot = tmp_path / "gallery-grid.png"
    await page.screenshot(path=grid_shot, full_page=True)
    narrow_shot = tmp_path / "gallery-grid-narrow.png"  # a phone's width: one column, nothing cut off
    await page.set_viewport_size({"width": 390, "height": 844})
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    await page.screenshot(path=narrow_shot, full_page=True)
    await page.set_viewport_size({"width": 1280, "height": 900})

    # The tile's status came from the event stream where it is served (200), by polling where not (404).
    assert events_answers, "the page never asked for the job's event stream"
    assert events_answers[0] in (200, 404), events_answers

    # A filter that excludes the job empties the grid; clearing it brings the job back.
    await page.get_by_label("Status").select_option("failed")
    await page.get_by_role("button", name="Apply").click()
    await expect(page.locator("#grid li.tile")).to_have_count(0)
    await expect(page.locator("#jobs-empty")).to_have_text("No jobs match these filters.")
    await page.get_by_role("button", name="Clear").click()
    await expect(tile).to_be_visible()

    await tile.locator("a.tile-link").click()
    await expect(page).to_have_url(re.compile(f"#/jobs/{job_id}$"))
    view = page.locator("#job-view")
    await expect(view.get_by_role("heading", name=f"Job {job_id}")).to_be_visible()
    for kind in ("original", "mask", "cutout"):
        await _image_loaded(page, f'#job-view img[data-kind="{kind}"]')
    await expect(view.locator('figure[data-kind="cutout"] .frame')).to_have_class(re.compile(r"\bchecker\b"))
    await expect(view.locator("#fact-status")).to_have_text("completed")
    await expect(view.locator("#fact-processing-time")).to_have_text(re.compile(r"^\d+(\.\d+)? (ms|s)$"))
    await expect(view.locator("#fact-completed time")).to_have_count(1)
    await expect(view.locator("#fact-model")).to_contain_text("tiny-rmbg-test")
    await expect(view.locator("#fact-attempts")).to_have_text(re.compile(r"^\d+$"))
    await expect(view.locator("#fact-tags li")).to_have_text(["astronaut", "gallery"])
    # No callback_url, so no webhook: "none".
    await expect(view.locator('.webhooks [data-webhooks="none"]')).to_be_visible()
    job_shot = tmp_path / "gallery-job.png"
    await page.screenshot(path=job_shot, full_page=True)

    # The key lives in the tab: a reload stays signed in; signing out forgets it.
    await page.reload()
    await expect(page.locator("#whoami")).to_contain_text(user_id)
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0

    assert not problems.errors, problems.errors
    with capsys.disabled():
        followed = "the event stream" if events_answers[0] == 200 else "polling (no events endpoint)"
        print(f"\ngallery: followed by {followed}; screenshots: {grid_shot} {narrow_shot} {job_shot}")  # noqa: T201


async def test_wrong_key_shows_an_error_and_no_jobs(pipeline: Pipeline, browser: Browser) -> None:
    page, _ = await _open(browser, pipeline)
    await page.get_by_label("API key").fill("rk_not_a_key_of_anyone")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#sign-in-error")).to_contain_text("refused")
    await expect(page.get_by_label("API key")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#gallery-view")).to_be_hidden()
    await expect(page.locator("#grid li")).to_have_count(0)
    assert await page.evaluate("sessionStorage.length") == 0


async def test_polling_when_the_events_endpoint_is_missing(
    pipeline: Pipeline, browser: Browser, tmp_path: Path
) -> None:
    user_id = f"gallery-poll-{secrets.token_hex(4)}"
    key = await pipeline.key(user_id)
    page, problems = await _open(browser, pipeline, may_be_missing=r"/v1/jobs/[^/]+/(events|webhooks)$")
    asked: list[str] = []

    async def not_deployed(route: Route) -> None:
        asked.append(route.request.url)
        await route.fulfill(
            status=404,
            content_type="application/json",
            body='{"error": {"code": "not_found", "message": "no such route"}}',
        )

    await page.route(re.compile(r"/v1/jobs/[^/]+/events$"), not_deployed)
    await _sign_in(page, key, user_id)
    images = [tmp_path / "coffee.png", tmp_path / "chelsea.png"]
    for path in images:
        path.write_bytes(sample_bytes(path.name))
    await page.locator("#files").set_input_files(images)
    tiles = page.locator("#grid li.tile")
    await expect(tiles).to_have_count(2)
    for i in range(2):
        await expect(tiles.nth(i)).to_have_attribute("data-status", "completed", timeout=JOB_TIMEOUT_MS)
    # A 404 tells the page the endpoint is not there: it polls from then on. Jobs that asked before the
    # first answer came ask once each, none again.
    assert 1 <= len(asked) <= len(images), asked
    assert len(set(asked)) == len(asked), asked
    assert not problems.errors, problems.errors


async def test_sse_parser_whatever_the_chunking(pipeline: Pipeline, browser: Browser) -> None:
    """The page's parser (static/js/sse.js) on every split of one stream into two chunks."""
    page, _ = await _open(browser, pipeline)
    result = await page.evaluate(
        """async () => {
          const { createParser } = await import("/static/js/sse.js");
          const stream = ": ping\\r\\nevent: pending\\r\\nid: pending\\r\\ndata: {\\"a\\":1}\\r\\n\\r\\n"
            + "event: processing\\rdata: line one\\rdata:line two\\r\\r"
            + "event: no-data\\n\\n"
            + "data\\n\\n"
            + "event: completed\\ndata: {\\"status\\":\\"completed\\"}\\n\\n"
            + "event: cut\\ndata: never ended";
          const runs = [];
          for (let cut = 0; cut <= stream.length; cut++) {
            const seen = [];
            const parser = createParser((e) => seen.push(e));
            parser.feed(stream.slice(0, cut));
            parser.feed(stream.slice(cut));
            parser.end();
            runs.push(JSON.stringify(seen));
          }
          return { distinct: [...new Set(runs)], count: runs.length };
        }"""
    )
    assert len(result["distinct"]) == 1, result["distinct"]
    assert result["distinct"][0] == (
        '[{"type":"pending","data":"{\\"a\\":1}","id":"pending"},'
        '{"type":"processing","data":"line one\\nline two","id":"pending"},'
        '{"type":"message","data":"","id":"pending"},'
        '{"type":"completed","data":"{\\"status\\":\\"completed\\"}","id":"pending"}]'
    )


async def test_page_and_assets_need_no_key_and_stay_in_their_folder(pipeline: Pipeline) -> None:
    async with httpx.AsyncClient(base_url=pipeline.api_url) as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        module = await client.get("/static/js/app.js")
        assert module.status_code == 200
        assert module.headers["content-type"].startswith("text/javascript")  # else no module runs
        for outside in (
            "/static/..%2F..%2Fapi.py",
            "/static/..%2Froutes%2Fgallery.py",
            "/static/js/",
            "/static/nope.js",
        ):
            resp = await client.get(outside)
            assert resp.status_code == 404, (outside, resp.status_code)
            assert resp.json()["error"]["code"] == "not_found"


async def test_images_through_the_api_where_jobs_carry_no_urls(
    pipeline: Pipeline, browser: Browser, tmp_path: Path
) -> None:
    """An API without `urls` in its job views (and no events endpoint): the page fetches each image
    through GET /v1/jobs/{id}/{kind} with the key and shows it as a blob: URL. The job page also shows a
    webhook's state and attempts (a made-up answer: the tests' receivers are not reachable from here)."""
    user_id = f"gallery-blob-{secrets.token_hex(4)}"
    key = await pipeline.key(user_id)
    page, problems = await _open(browser, pipeline, may_be_missing=r"/v1/jobs/[^/]+/(events|webhooks)$")

    async def without_urls(route: Route) -> None:
        resp = await route.fetch()
        body = await resp.json()
        for job in body.get("items", [body]):
            job.pop("urls", None)
        await route.fulfill(response=resp, json=body)

    async def not_deployed(route: Route) -> None:
        await route.fulfill(status=404, json={"error": {"code": "not_found", "message": "no such route"}})

    async def deliveries(route: Route) -> None:
        job_id = route.request.url.rsplit("/", 2)[-2]
        attempt = {"attempt": 1, "at": "2026-12-01T10:00:00Z", "status_code": 500, "latency_ms": 41, "error": None}
        await route.fulfill(
            json={
                "job_id": job_id,
                "url": "https://hooks.example.com/rmbg",
                "state": "delivered",
                "event_type": "job.completed",
                "sending": False,
                "registered_at": "2026-12-01T09:59:59Z",
                "delivered_at": "2026-12-01T10:00:06Z",
                "last_status": 200,
                "items": [attempt, {**attempt, "attempt": 2, "status_code": 200, "at": "2026-12-01T10:00:06Z"}],
            }
        )

    await page.route(re.compile(r"/v1/jobs(\?.*|/[^/]+)$"), without_urls)
    await page.route(re.compile(r"/v1/jobs/[^/]+/webhooks$"), deliveries)
    await page.route(re.compile(r"/v1/jobs/[^/]+/events$"), not_deployed)
    await _sign_in(page, key, user_id)
    image = tmp_path / "coffee.png"
    image.write_bytes(sample_bytes("coffee.png"))
    await page.locator("#files").set_input_files(image)
    tile = page.locator("#grid li.tile")
    await expect(tile).to_have_attribute("data-status", "completed", timeout=JOB_TIMEOUT_MS)
    await _image_loaded(page, '#grid img[data-kind="cutout"]')
    assert (await page.get_attribute('#grid img[data-kind="cutout"]', "src") or "").startswith("blob:")

    await page.locator("#grid a.tile-link").click()
    await _image_loaded(page, '#job-view img[data-kind="mask"]')
    assert (await page.get_attribute('#job-view img[data-kind="mask"]', "src") or "").startswith("blob:")
    webhooks = page.locator("#job-view .webhooks")
    await expect(webhooks.locator('[data-webhooks="summary"]')).to_contain_text("https://hooks.example.com/rmbg")
    await expect(webhooks.locator('[data-webhooks="summary"] .badge')).to_have_text("delivered")
    await expect(webhooks.locator('[data-webhooks="attempts"] tbody tr')).to_have_count(2)
    await expect(webhooks.locator('[data-webhooks="attempts"] tbody tr').nth(0)).to_contain_text("500")
    await page.screenshot(path=tmp_path / "gallery-job-webhooks.png", full_page=True)
    assert not problems.errors, problems.errors
