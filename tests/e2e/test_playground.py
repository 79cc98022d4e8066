"""The playground page in a real headless Chromium (the OS package, driven by Playwright, which
never downloads a browser here): load it, type a prompt, watch the tokens stream in, hover a
token, open the attention view, tokenize the prompt, check the phone width, take a screenshot.

`LLM_TINY_SCREENSHOT=path` also saves the screenshot there, and `LLM_TINY_SERVE_CKPT=run`
serves that run instead of a random tiny model (docs/img/playground.png is made this way).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

from serve_helpers import live_server, request, tiny_checkpoint  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} not found (make install-browser installs it)", allow_module_level=True)


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    run = os.environ.get("LLM_TINY_SERVE_CKPT") or tiny_checkpoint(
        tmp_path_factory.mktemp("playground") / "tiny"
    )
    with live_server(Path(run)) as u:
        yield u


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def covered_tokens(page) -> int:
    """How many token boxes of the output the visible tooltip overlaps."""
    return page.evaluate(
        """() => { const t = document.getElementById('tip').getBoundingClientRect();
          return [...document.querySelectorAll('#output .tok')].filter((el) => {
            const r = el.getBoundingClientRect();
            return r.left < t.right && t.left < r.right && r.top < t.bottom && t.top < r.bottom;
          }).length; }"""
    )


def test_playground_streams_hovers_and_shows_attention(browser, url, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(url + "/")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('model')")
    page.fill("#prompt", "ROMEO:")
    page.fill("#seed", "3")
    page.fill("#max_tokens", "40")
    # Record how many generated tokens are on the page each time the output changes.
    page.evaluate(
        """() => { window.counts = [];
        new MutationObserver(() => window.counts.push(
            document.querySelectorAll('#output .tok:not(.prompt)').length))
          .observe(document.getElementById('output'), {childList: true}); }"""
    )
    page.click("#generate")
    page.wait_for_function("document.getElementById('finish').textContent.startsWith('finish')")
    generated = page.locator("#output .tok:not(.prompt)")
    n = generated.count()
    assert n >= 1
    counts = [c for c in page.evaluate("window.counts") if c]
    assert len(set(counts)) > 1, "tokens should arrive one by one, not all at once"

    # The boxes are the tokens the API gives for the same request.
    body = {"model": page.evaluate("model"), "prompt": "ROMEO:", "seed": 3, "max_tokens": 40,
            "temperature": 0.8, "top_p": 0.95, "return_token_ids": True}  # fmt: skip
    status, answer = request(url, "POST", "/v1/completions", json.dumps(body).encode())
    assert status == 200
    assert n == len(answer["choices"][0]["token_ids"])

    generated.first.hover()
    tip = page.locator("#tip")
    tip.wait_for(state="visible")
    assert "probability" in tip.inner_text()
    assert tip.locator("tr").count() == 5  # the five most likely tokens at that step
    assert covered_tokens(page) == 0  # the tooltip hides none of the text around it

    generated.nth(n - 1).click()
    page.locator("#attn-panel").wait_for(state="visible")
    weights = page.eval_on_selector_all("#attn .tok", "els => els.map(e => +e.dataset.weight)")
    block = request(url, "GET", "/v1/models")[1]["data"][0]["max_model_len"]
    assert len(weights) == min(block, page.locator("#output .tok").count())
    assert abs(sum(weights) - 1) < 1e-2
    page.select_option("#head", "1")
    other = page.eval_on_selector_all("#attn .tok", "els => els.map(e => +e.dataset.weight)")
    assert len(other) == len(weights) and abs(sum(other) - 1) < 1e-2

    page.click("#tokenize")
    page.locator("#tokenize-panel").wait_for(state="visible")
    assert page.locator("#tokenized .tok").count() >= 1

    generated.nth(min(3, n - 1)).hover()  # the screenshot shows a tooltip
    tip.wait_for(state="visible")
    shot = tmp_path / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("LLM_TINY_SCREENSHOT"):
        shutil.copy(shot, os.environ["LLM_TINY_SCREENSHOT"])

    # Phone width: nothing wider than the screen, and the tooltip still covers no token.
    page.set_viewport_size({"width": 375, "height": 740})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    generated.first.hover()
    tip.wait_for(state="visible")
    assert covered_tokens(page) == 0
    page.close()


def test_playground_chat_view_keeps_the_conversation(browser, url):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(url + "/")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('model')")
    assert "plain" in page.text_content("#chat-template")  # a base run: the plain template
    page.fill("#seed", "3")
    page.fill("#max_tokens", "12")
    page.fill("#system", "Be brief.")
    for k, text in enumerate(["Hi", "And then?"]):
        page.fill("#chat-input", text)
        page.click("#send")
        page.wait_for_function(
            f"document.querySelectorAll('#chat-log .msg').length === {2 * (k + 1)} && "
            "document.getElementById('chat-finish').textContent.startsWith('finish')"
        )
    roles = page.eval_on_selector_all("#chat-log .msg", "els => els.map(e => e.className)")
    assert roles == ["msg user", "msg assistant"] * 2
    assert page.text_content("#chat-log .msg.user") == "userHi"
    page.click("#reset")
    assert page.eval_on_selector_all("#chat-log .msg", "els => els.length") == 0
