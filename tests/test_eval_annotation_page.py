"""The NAMI-1K annotation page in headless Chromium: type scores, use the keys, reload, export, score the export.

Chromium is driven over the DevTools protocol (websocket-client). Skipped when /usr/bin/chromium
or websocket-client is missing (`.ci/run` installs Debian's chromium when it can).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from nami_core.eval.nami1k import annotate, score
from tests.test_eval_nami1k import fake_generated

# true once a fresh page document (not the one marked before a reload) has run its script
LOADED = ("window.__before_reload === undefined && document.readyState === 'complete' && "
          "!!document.getElementById('position') && document.getElementById('position').textContent")
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
websocket = pytest.importorskip("websocket", reason="websocket-client is not installed")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--remote-allow-origins=*"]


class DevTools:
    """A minimal DevTools-protocol client on one websocket: `call(method, **params)` waits for its answer."""

    def __init__(self, url: str) -> None:
        self.socket = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def key(self, key: str, code: int, shift: bool = False) -> None:
        base = {"key": key, "code": key, "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code,
                "modifiers": 8 if shift else 0}
        self.call("Input.dispatchKeyEvent", type="rawKeyDown", **base)
        if key == "Enter":
            self.call("Input.dispatchKeyEvent", type="char", text="\r", **base)
        self.call("Input.dispatchKeyEvent", type="keyUp", **base)

    def type_into(self, selector: str, text: str) -> None:
        self.js(f"document.querySelector({json.dumps(selector)}).focus()")
        self.call("Input.insertText", text=text)

    def wait_for(self, expression: str, timeout: float = 20.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                value = self.js(expression)
            except RuntimeError:  # the document was replaced while evaluating (navigation in progress)
                value = None
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}")

    def close(self) -> None:
        self.socket.close()


def devtools_endpoints(port_file: Path) -> tuple[str, str, str] | None:
    """(host, browser websocket path, first page's websocket URL), or None until Chromium lists a page.

    A cold browser writes its DevTools port a moment before it lists the about:blank page."""
    lines = port_file.read_text().splitlines() if port_file.exists() else []
    if len(lines) < 2:
        return None
    host = f"127.0.0.1:{lines[0]}"
    with urllib.request.urlopen(f"http://{host}/json/list", timeout=10) as answer:
        pages = [t for t in json.load(answer) if t["type"] == "page"]
    return (host, lines[1], pages[0]["webSocketDebuggerUrl"]) if pages else None


@pytest.fixture
def chromium(tmp_path):
    profile = tmp_path / "profile"
    process = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 60
        while (endpoints := devtools_endpoints(profile / "DevToolsActivePort")) is None:
            if process.poll() is not None or time.monotonic() > end:
                pytest.skip("Chromium did not start its DevTools server")
            time.sleep(0.2)
        yield endpoints
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_annotate_export_and_score_in_chromium(tmp_path, chromium):
    host, browser_path, page_url = chromium
    page_path = tmp_path / "page.html"
    annotate.write_page([("nami", fake_generated(tmp_path / "nami", ids=("0000",))),
                         ("flux", fake_generated(tmp_path / "flux", ids=("0000",)))], page_path, max_side=32)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser = DevTools(f"ws://{host}{browser_path}")
    browser.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
    page = DevTools(page_url)
    try:
        page.call("Page.enable")
        page.call("Page.navigate", url=page_path.as_uri())
        page.wait_for(LOADED)
        assert page.js("document.getElementById('position').textContent") == "Image 1 of 2"
        keys = page.js("JSON.stringify(DATA.items.map(i => i.key))")
        first, second = json.loads(keys)
        assert sorted([first, second]) == ["flux/0000_00.png", "nami/0000_00.png"]
        assert page.js("document.getElementById('image').naturalWidth") == 32  # embedded JPEG, longest side 32

        page.type_into("#annotator", "Ada Lovelace")
        for dim, value in (("relevance", "80"), ("coherence", "70"), ("aesthetics", "60")):
            page.type_into(f"#score-{dim}", value)
        page.js("document.getElementById('score-realism').focus()")
        page.key("ArrowUp", 38)  # empty field: 50 + 1
        page.key("ArrowUp", 38, shift=True)  # + 10
        assert page.js("document.getElementById('score-realism').value") == "61"
        page.key("Enter", 13)  # next image
        assert page.js("document.getElementById('position').textContent") == "Image 2 of 2"
        assert page.js("document.activeElement.id") == "score-relevance"
        for dim, value in (("relevance", "10"), ("coherence", "20"), ("aesthetics", "30"), ("realism", "40")):
            page.type_into(f"#score-{dim}", value)
        assert page.js("document.getElementById('progress').textContent") == "2 / 2 scored"
        page.js("document.activeElement.blur()")
        page.key("ArrowLeft", 37)  # previous image, outside a text field
        assert page.js("document.getElementById('position').textContent") == "Image 1 of 2"
        assert page.js("document.getElementById('score-relevance').value") == "80"

        page.js("window.__before_reload = true")
        page.call("Page.reload")  # progress survives in localStorage
        page.wait_for(LOADED)
        assert page.js("document.getElementById('annotator').value") == "Ada Lovelace"
        assert page.js("document.getElementById('position').textContent") == "Image 1 of 2"
        assert page.js("document.getElementById('score-aesthetics').value") == "60"
        assert page.js("document.getElementById('progress').textContent") == "2 / 2 scored"

        box = page.js("JSON.stringify(document.getElementById('export').getBoundingClientRect())")
        rect = json.loads(box)
        x, y = rect["x"] + rect["width"] / 2, rect["y"] + rect["height"] / 2
        for kind in ("mousePressed", "mouseReleased"):
            page.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)
        exported = downloads / "nami1k-Ada_Lovelace.json"
        end = time.monotonic() + 20
        while not exported.exists() and time.monotonic() < end:
            time.sleep(0.1)
        assert exported.exists(), sorted(p.name for p in downloads.iterdir())
        assert page.js("document.getElementById('status').textContent") == "Exported 2 scored images."
    finally:
        page.close()
        browser.close()

    data = json.loads(exported.read_text())
    assert data["format"] == "nami1k-annotations/1" and data["annotator"] == "Ada Lovelace"
    rows = {row["key"]: row for row in data["items"]}
    assert [rows[first][d] for d in annotate.DIMENSIONS] == [80, 70, 60, 61]
    assert [rows[second][d] for d in annotate.DIMENSIONS] == [10, 20, 30, 40]
    assert rows[first]["model"] == first.split("/")[0] and rows[first]["source"] == "open"

    result = score.score_annotations(score.read_annotations([exported]))
    overall = {m: t["overall"] for m, t in result["models"].items()}
    # .3 * 80 + .3 * 70 + .2 * 60 + .2 * 61 = 69.2 and .3 * 10 + .3 * 20 + .2 * 30 + .2 * 40 = 23
    assert overall[first.split("/")[0]] == pytest.approx(69.2) and overall[second.split("/")[0]] == pytest.approx(23.0)
