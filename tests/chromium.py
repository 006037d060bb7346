"""A small driver for the system's headless Chromium (Debian's ``chromium``) over the DevTools protocol, with
``websocket-client``: open a page, evaluate JavaScript (promises awaited), wait for a condition, set a file input,
collect console errors, take a full-page screenshot. Used by the browser tests and scripts/screenshot_report.py.

    with Chromium() as page:
        page.open("file:///tmp/report.html")
        page.eval("document.title")
        assert not page.errors()
"""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Self


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Chromium:
    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 60.0):
        import websocket

        exe = chromium_path()
        if exe is None:
            raise RuntimeError("no chromium on PATH (Debian: apt-get install chromium; scripts/setup.sh does)")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="mosaic-chromium-")
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
             "--mute-audio", "--autoplay-policy=no-user-gesture-required", "--remote-allow-origins=*",
             f"--window-size={width},{height}", "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        end = time.time() + timeout
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.time() > end:
                self.close()
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = []
        while not pages and time.time() < end:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            time.sleep(0.1)
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=timeout,
                                              suppress_origin=True)
        self._id = 0
        self.events: list[dict] = []
        for domain in ("Page", "Runtime", "Log", "DOM"):
            self.send(f"{domain}.enable")

    # ----------------------------------------------------------------------------------------------- protocol
    def _recv(self) -> dict:
        msg = json.loads(self.ws.recv())
        if "method" in msg:
            self.events.append(msg)
        return msg

    def send(self, method: str, **params) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = self._recv()
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    # ------------------------------------------------------------------------------------------------ helpers
    def open(self, url: str) -> None:
        """Navigate and wait for the load event."""
        self.events = [e for e in self.events if e["method"] != "Page.loadEventFired"]
        self.send("Page.navigate", url=url)
        end = time.time() + self.timeout
        while not any(e["method"] == "Page.loadEventFired" for e in self.events):
            if time.time() > end:
                raise TimeoutError(f"{url} did not finish loading in {self.timeout:.0f} s")
            self._recv()

    def eval(self, expression: str):
        """Value of a JavaScript expression (a promise is awaited); a thrown error raises RuntimeError."""
        res = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise RuntimeError(f"javascript error: {d.get('exception', {}).get('description') or d.get('text')}")
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float | None = None, every: float = 0.25):
        """Poll ``expression`` until it is truthy; return its value."""
        end = time.time() + (timeout or self.timeout)
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.time() > end:
                raise TimeoutError(f"waited {timeout or self.timeout:.0f} s for: {expression}")
            time.sleep(every)

    def set_files(self, selector: str, paths: list[str]) -> None:
        """Put files into an ``<input type=file>`` (as a user's choice would: input and change events fire)."""
        root = self.send("DOM.getDocument", depth=-1, pierce=True)["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        if not node:
            raise RuntimeError(f"no element matches {selector!r}")
        self.send("DOM.setFileInputFiles", nodeId=node, files=[str(Path(p).resolve()) for p in paths])

    def media(self, timeout_ms: int = 20000) -> dict:
        """Wait until every ``<img>`` and ``<audio>`` has loaded or failed; their natural widths and
        duration / readyState / error code."""
        return self.eval(f"""(async () => {{
          const imgs = [...document.images], auds = [...document.querySelectorAll('audio')];
          const settle = (el, ok, evs) => ok ? 0 : new Promise(r => {{
            evs.forEach(e => el.addEventListener(e, r)); setTimeout(r, {timeout_ms}); }});
          await Promise.all(imgs.map(i => settle(i, i.complete, ['load', 'error'])));
          await Promise.all(auds.map(a => settle(a, a.readyState >= 1 || a.error, ['loadedmetadata', 'error'])));
          return {{images: imgs.map(i => ({{alt: i.alt, width: i.naturalWidth}})),
                   audio: auds.map(a => ({{duration: a.duration, ready: a.readyState,
                                          error: a.error ? a.error.code : null}}))}};
        }})()""")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads the page reported so far."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append(d.get("exception", {}).get("description") or d.get("text", "exception"))
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif e["method"] == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"{p['entry'].get('text')} ({p['entry'].get('url', '')})")
        return out

    def screenshot(self, path: str | Path, full_page: bool = True) -> Path:
        """PNG of the viewport or of the whole page."""
        params = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        data = base64.b64decode(self.send("Page.captureScreenshot", **params)["data"])
        path = Path(path)
        path.write_bytes(data)
        return path

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
