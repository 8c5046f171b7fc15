"""The HTML evaluation report in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

Skipped, with the reason, when the playwright package or a chromium executable is missing: neither is in
requirements-build.txt (Playwright is a 170 MB wheel, and its own browser download needs a CDN), so install
them with ``apt-get install chromium`` and ``.venv/bin/pip install playwright``; ``playwright install`` is not
needed. The page must render, show the evaluation JSON's numbers, load its thumbnails from data: URIs, ask
nothing of the network and log no console error.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import List

import pytest

from test_html_report import HOSTILE, SECOND, expected_cells, write_page

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")

CELLS_JS = """() => Array.from(document.querySelectorAll('td.acc')).map(td => {
    const row = td.closest('tr'), table = td.closest('table');
    return [row.dataset.dataset || table.dataset.dataset, row.dataset.label === undefined ? null : row.dataset.label,
            td.textContent];
})"""
IMAGES_JS = """() => Array.from(document.images).map(img => [img.currentSrc.slice(0, 23), img.complete,
                                                                img.naturalWidth, img.naturalHeight])"""


def test_the_report_renders_in_chromium_offline_with_the_evaluations_numbers(tmp_path: Path) -> None:
    _, evaluation = write_page(tmp_path)
    page_url = (tmp_path / "report.html").as_uri()
    blocked: List[str] = []
    console_errors: List[str] = []
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = browser.new_page()

            def route(r: "sync_api.Route") -> None:
                if r.request.url.startswith(("file:", "data:")):
                    r.continue_()
                else:
                    blocked.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            page.on("requestfailed", lambda r: console_errors.append(f"request failed: {r.url}"))
            page.goto(page_url, wait_until="load")
            title = page.title()
            score = page.text_content("#score")
            tables = page.locator("table#datasets").count(), page.locator("table.classes").count()
            heat = page.locator("table.heat").count()
            cells = page.evaluate(CELLS_JS)
            images = page.evaluate(IMAGES_JS)
            body = page.inner_text("body")
            bold = page.locator("b").count()
        finally:
            browser.close()
    assert blocked == [] and console_errors == []
    assert title == f"zeroshot evaluation: score {evaluation['score']:.2f}"
    assert score == f"{evaluation['score']:.2f}"
    assert tables == (1, 2) and heat == 2
    assert {(d, label): text for d, label, text in cells} == expected_cells(evaluation)
    assert len(images) >= 10
    assert all(src == "data:image/jpeg;base64," and done and w > 0 and h > 0 for src, done, w, h in images), images
    assert HOSTILE in body and SECOND in body
    assert bold == 3  # the score and the two tier names: the dataset name's "<b>" stayed text
