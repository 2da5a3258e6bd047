"""End to end in headless Chromium: open the UI, check data, train a tiny run from the form, watch its loss
curve, evaluate, chat with the result and export it; a screenshot of every page.

Uses Debian's ``chromium`` (never a downloaded browser) through Playwright's ``executable_path``.
Screenshots go to the test's temporary folder; with ``GLMTUNE_SCREENSHOTS=DIR`` they are also
copied there (``GLMTUNE_SCREENSHOTS=docs`` refreshes the README's images).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path
from urllib.parse import urljoin

import pytest

CHROMIUM = next((p for p in (os.environ.get("GLMTUNE_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser")) if p), None)
if CHROMIUM is None:
    pytest.skip("no Chromium installed (apt-get install chromium, or set GLMTUNE_CHROMIUM); "
                "the web UI browser test needs one", allow_module_level=True)
pytest.importorskip("gradio", reason="gradio not installed (pip install 'glmtune[webui]')")
pytest.importorskip("playwright", reason="playwright not installed (pip install playwright; no browser download "
                                         "needed, the system Chromium is used)")

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 120_000
# Gradio's own use of pandas warns under pandas 3; not ours to fix.
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(tiny_workspace):
    from glmtune.webui.app import AppContext, launch

    port = free_port()
    ctx = AppContext(runs_root=tiny_workspace["runs"], model=str(tiny_workspace["model"]),
                     data=str(tiny_workspace["data"]))
    app = launch(ctx, port=port, block=False)
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture()
def page(tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                        headless=True, args=FLAGS,
                                                        viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        yield context.pages[0] if context.pages else context.new_page()
        context.close()


def shoot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / "screenshots" / f"webui-{name}.png"
    path.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    target = os.environ.get("GLMTUNE_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
    return path


def use_run(page, prefix: str, run_dir: Path) -> None:
    box = page.locator(f"#{prefix}-run input")
    box.fill(str(run_dir))
    box.press("Enter")
    page.locator(f"#{prefix}-use-run").click()
    page.locator(f"#{prefix}-model textarea, #{prefix}-model input").first.wait_for()
    expect_value(page, f"#{prefix}-model", str(run_dir / "final"))


def expect_value(page, selector: str, value: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator(f"{selector} textarea, {selector} input").first).to_have_value(value, timeout=TIMEOUT_MS)


def test_browser_train_watch_chat_export(server, page, tiny_workspace, tmp_path):
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    page.goto(server)
    # Data: the check lists the summary and draws the length histogram.
    page.get_by_role("button", name="Check data").click()
    expect(page.locator("#data-summary textarea")).to_have_value(
        re.compile("all records are valid"), timeout=TIMEOUT_MS)
    page.get_by_role("button", name="Preview tokens and labels").click()
    expect(page.get_by_text("[gMASK]").first).to_be_visible()
    shoot(page, tmp_path, "data")

    # Train: a tiny full fine-tune started from the form, watched until its loss curve shows.
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-run-name input, #train-run-name textarea").first.fill("browser-run")
    page.get_by_role("radio", name="full").check()
    # README screenshots want a model that answers; the plain test run stays short.
    steps = "60" if os.environ.get("GLMTUNE_SCREENSHOTS") else "8"
    for elem, value in (("train-steps", steps), ("train-log-steps", "1"), ("train-lr", "0.002"),
                        ("train-max-in", "64"), ("train-max-out", "96"), ("train-batch", "8")):
        page.locator(f"#{elem} input").fill(value)
    page.get_by_role("button", name="Show resolved config").click()
    page.get_by_text("resolved config (YAML)").click()
    expect(page.locator("#train-yaml")).to_contain_text("max_input_length: 64")  # (the editor shows its first lines)
    link = page.locator("#train-yaml-file a[href$='/train.yaml']")
    expect(link).to_be_visible()  # the download link: the whole resolved config, the form's choices in it
    resolved = page.request.get(urljoin(page.url, link.get_attribute("href"))).text()
    assert "name: full" in resolved and "max_output_length: 96" in resolved, resolved
    page.locator("#train-start").click()
    run_dir = tiny_workspace["runs"] / "browser-run"
    expect(page.locator("#train-message")).to_contain_text("started glmtune train")
    expect(page.locator("#loss-plot img, #loss-plot svg, #loss-plot canvas").first).to_be_visible()
    expect(page.locator("#run-status")).to_contain_text("finished", timeout=180_000)
    assert (run_dir / "final").is_dir() and (run_dir / "loss.png").is_file()
    shoot(page, tmp_path, "train")

    # Evaluate the result on a few samples.
    page.get_by_role("tab", name="Evaluate").click()
    use_run(page, "eval", run_dir)
    page.locator("#eval-max-samples input").fill("4")
    page.locator("#eval-max-new input").fill("8")
    page.locator("#eval-go").click()
    expect(page.locator("#eval-metrics")).to_contain_text("rouge-l")
    shoot(page, tmp_path, "evaluate")

    # Chat with it: the reply streams into the chat box.
    page.get_by_role("tab", name="Chat").click()
    use_run(page, "chat", run_dir)
    page.locator("#chat-load").click()
    expect(page.locator("#chat-loaded")).to_contain_text("loaded")
    page.get_by_text("system prompt, tools, sampling").click()
    page.locator("#chat-temperature input[type=number]").fill("0")
    page.locator("#chat-temperature input[type=number]").press("Enter")
    page.locator("#chat-input textarea").fill("Who are you?")
    page.locator("#chat-send").click()
    bot = page.locator("#chat-box")
    expect(bot).to_contain_text("Who are you?")
    expect(page.locator("#chat-input textarea")).to_have_value("")  # cleared once the reply is complete
    # The box must hold a reply besides the question (the model's answer, or its tool call).
    text = bot.inner_text()
    reply = text.replace("Who are you?", "").removeprefix("chat").strip()  # "chat" is the box's label
    assert reply, "the chat box shows the question but no reply"
    shoot(page, tmp_path, "chat")

    # Export it and see where it went.
    page.get_by_role("tab", name="Export").click()
    use_run(page, "export", run_dir)
    out = tmp_path / "exported"
    page.locator("#export-out textarea, #export-out input").first.fill(str(out))
    page.locator("#export-go").click()
    expect(page.locator("#export-result textarea")).to_have_value(
        re.compile("exported .*-> " + re.escape(str(out.resolve())), re.S))
    assert (out / "config.json").is_file()
    shoot(page, tmp_path, "export")
