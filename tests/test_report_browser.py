"""The HTML report as a person sees it: `snakemake --report` on the shared end-to-end run, opened in
headless Chromium and driven over the Chrome DevTools protocol.

The protocol runs over a pipe (--remote-debugging-pipe: JSON messages separated by NUL bytes, commands
on file descriptor 3, replies and events on 4), so no websocket library and no network port are needed.
Without Chromium the test skips; CI installs Debian's chromium package (.ci/run)."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, snakemake

BROWSERS = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome")
# Without the background-networking flags Chromium hangs on refused connections (offline machines).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio"]
WIDTH, HEIGHT = 1400, 900


def chromium_binary() -> str | None:
    """$CHROMIUM if set, else the first Chromium or Chrome on PATH."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return shutil.which(explicit)
    return next(filter(None, map(shutil.which, BROWSERS)), None)


def report_categories() -> set[str]:
    """Every category= given to report() in the rules."""
    found = set()
    for smk in (REPO / "rules").glob("*.smk"):
        found |= set(re.findall(r"""\bcategory\s*=\s*["']([^"']+)["']""", smk.read_text()))
    return found


class DevToolsError(RuntimeError):
    pass


class Browser:
    """Headless Chromium with one page, driven over the DevTools protocol on a pipe."""

    def __init__(self, binary: str, profile: Path, log: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # The child gets the pipes as fds 3 and 4. posix_spawn runs no Python code between fork and
        # exec (safe beside torch's threads); the copies at 10 and above keep dup2 from clobbering.
        high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
        high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
        self._log = open(log, "wb")
        argv = [binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        try:
            self.pid = os.posix_spawn(binary, argv, os.environ, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, self._log.fileno(), 1),
                (os.POSIX_SPAWN_DUP2, self._log.fileno(), 2),
                (os.POSIX_SPAWN_DUP2, high_r, 3),
                (os.POSIX_SPAWN_DUP2, high_w, 4),
            ])
        finally:
            for fd in (to_browser_r, from_browser_w, high_r, high_w):
                os.close(fd)
        self.returncode: int | None = None
        self._messages: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._next_id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self._messages.put(None)  # the browser went away
                return
            buffer += chunk
            *complete, buffer = buffer.split(b"\0")
            for raw in complete:
                self._messages.put(json.loads(raw))

    def _take(self, timeout: float) -> dict | None:
        message = self._messages.get(timeout=timeout)
        if message is None:
            raise DevToolsError(f"Chromium exited (code {self.poll()}); see {self._log.name}")
        if "id" not in message:
            self.events.append(message)
        return message

    def call(self, method: str, params: dict | None = None, *, page: bool = True, timeout: float = 60) -> dict:
        """Send one command (to the page's session unless page=False) and return its result."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if page and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._take(max(0.01, deadline - time.monotonic()))
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise DevToolsError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def drain(self) -> None:
        """Collect the events that arrived since the last command."""
        while True:
            try:
                self._take(0.05)
            except queue.Empty:
                return

    def wait_event(self, method: str, after: int, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[after:]:
                if event.get("method") == method:
                    return event
            try:
                self._take(max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise DevToolsError(f"no {method} within {timeout} s") from None

    def open_page(self) -> None:
        target = self.call("Target.createTarget", {"url": "about:blank"}, page=False)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True}, page=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})

    def navigate(self, url: str) -> None:
        mark = len(self.events)
        reply = self.call("Page.navigate", {"url": url})
        if reply.get("errorText"):
            raise DevToolsError(f"navigating to {url}: {reply['errorText']}")
        self.wait_event("Page.loadEventFired", mark, timeout=120)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises are awaited)."""
        reply = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                               "awaitPromise": True, "userGesture": True})
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            raise DevToolsError(details.get("exception", {}).get("description") or details.get("text"))
        return reply["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 30):
        """Poll an expression until it is truthy (React renders after a click, not during it)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not seen within {timeout} s")
            time.sleep(0.2)

    def screenshot(self, dest: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        dest.write_bytes(base64.b64decode(data))
        return dest

    def console_errors(self) -> list[str]:
        """Uncaught exceptions, console.error/assert calls and error-level log entries (failed
        loads, blocked resources, ...) seen so far."""
        self.drain()
        errors = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                errors.append("exception: " + (details.get("exception", {}).get("description") or details.get("text", "")))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
                errors.append(f"console.{params['type']}: {text}")
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                entry = params["entry"]
                errors.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
            elif method in ("Inspector.targetCrashed", "Target.targetCrashed"):
                errors.append("the page crashed")
        return errors

    def close(self) -> None:
        try:
            self.call("Browser.close", page=False, timeout=10)
        except (DevToolsError, queue.Empty, OSError):
            pass
        deadline = time.monotonic() + 15
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        os.close(self._to_browser)
        self._reader.join(timeout=5)  # it ends at the pipe's end of file
        os.close(self._from_browser)
        self._log.close()


# Page helpers: the report is a React app; its navigation is a <nav> of <a href="#"> links.
JS_HELPERS = """
const visible = (el) => !!(el && el.offsetParent !== null && el.getClientRects().length);
const menuLinks = () => [...document.querySelectorAll('nav ul li a')].filter(visible);
const linkLabelled = (text) => menuLinks().find((a) => a.textContent.trim() === text);
const resultRows = () => [...document.querySelectorAll('nav table tbody tr')].filter(visible);
const rowText = (tr) => [...tr.cells].map((td) => td.textContent.trim()).filter(Boolean).join(' / ');
const rowWith = (text) => resultRows().find((tr) => [...tr.cells].some((td) => td.textContent.trim() === text));
const rowButtons = (tr) => [...tr.querySelectorAll('a[type=button]')];
const goHome = () => document.querySelector('nav nav ol li a').click();
"""


def js(body: str) -> str:
    return f"(() => {{ {JS_HELPERS} {body} }})()"


# Skipped before any fixture runs (the end-to-end run takes minutes), and nothing is installed here.
pytestmark = pytest.mark.skipif(
    chromium_binary() is None,
    reason="Chromium is not installed (Debian: apt-get install chromium, as .ci/run does; or set $CHROMIUM "
           "to a Chromium or Chrome binary): the HTML report is not checked in a browser")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = chromium_binary()
    root = tmp_path_factory.mktemp("chromium")
    b = Browser(binary, root / "profile", root / "chromium.log")
    try:
        b.open_page()
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def report_html(finished_run, tmp_path_factory):
    workdir, _ = finished_run
    dest = tmp_path_factory.mktemp("report") / "report.html"
    proc = snakemake(workdir, "--report", str(dest))
    assert proc.returncode == 0 and dest.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir, dest


@pytest.mark.slow
def test_report_renders_in_a_browser(report_html, browser, tmp_path):
    workdir, report = report_html
    res = workdir / "results"
    browser.navigate(report.as_uri())
    browser.wait_for(js("return menuLinks().some((a) => a.textContent.trim() === 'Statistics');"), "the report's menu")

    # every category of the rules is listed in the menu
    expected = report_categories()
    assert {"Familiarity probe", "Dissonance awareness", "Knowledge updates", "Leaderboard"} <= expected
    listed = set(browser.evaluate(js("return menuLinks().map((a) => a.textContent.trim());")))
    seen = {"report": str(report), "menu": sorted(listed), "results": {}}  # written to seen.json
    assert expected <= listed, f"missing from the menu: {sorted(expected - listed)}"

    # each category opens onto its results; the summary tables are among them
    # (a category whose figures have no labels lists file paths, a labelled one the labels)
    tables = {"Familiarity probe": ("familiarity.csv", "familiarity summary"),
              "Dissonance awareness": ("awareness.csv", "classifier summary")}
    for category in sorted(expected):
        browser.evaluate(js("goHome();"))
        browser.wait_for(js(f"return !!linkLabelled({json.dumps(category)});"), f"menu entry {category}")
        browser.evaluate(js(f"linkLabelled({json.dumps(category)}).click();"))
        if category == "Knowledge updates":  # one subcategory per scenario
            scenario = "nondissonant_update"
            browser.wait_for(js(f"return !!linkLabelled('{scenario}');"), f"{category}: subcategory {scenario}")
            browser.evaluate(js(f"linkLabelled('{scenario}').click();"))
            row_text = browser.wait_for(js("return resultRows().map(rowText).join('|');"),
                                        f"{category}/{scenario}: results")
            seen["results"][f"{category}/{scenario}"] = row_text.split("|")
            assert "summary" in row_text and "accuracy vs k" in row_text, row_text
            continue
        row_text = browser.wait_for(js("return resultRows().map(rowText).join('|');"),
                                    f"{category}: results")
        seen["results"][category] = row_text.split("|")
        if category in tables:
            assert any(name in row_text for name in tables[category]), f"{category}: no summary table in {row_text!r}"

    # the leaderboard: its table is listed, its caption shows, and the file behind it is the CSV
    browser.evaluate(js("goHome();"))
    browser.wait_for(js("return !!linkLabelled('Leaderboard');"), "menu entry Leaderboard")
    browser.evaluate(js("linkLabelled('Leaderboard').click();"))
    browser.wait_for(js("return !!rowWith('leaderboard') && !!rowWith('leaderboard (CSV)') "
                        "&& !!rowWith('retention x acquisition');"),
                     "Leaderboard: the table, its CSV and the Pareto figure")
    # the table is an HTML page shown in place (an iframe in the content pane)
    browser.evaluate(js("rowButtons(rowWith('leaderboard'))[0].click();"))
    src = browser.wait_for(js("""
        const f = [...document.querySelectorAll('iframe')].find((i) => i.src.includes('filename=leaderboard.html'));
        return f && f.src;"""), "Leaderboard: the table shown in place")
    table = base64.b64decode(src.split("base64,", 1)[1]).decode("utf-8")
    assert "<table" in table and "retention" in table and "Wilson interval" in table
    assert table == (res / "report" / "leaderboard.html").read_text()
    csv = browser.evaluate(js("""
        const href = rowButtons(rowWith('leaderboard (CSV)'))[0].href;
        return fetch(href).then((r) => r.text());"""))
    assert csv == (res / "report" / "leaderboard.csv").read_text()
    header = csv.splitlines()[0].split(",")
    assert {"scenario", "method", "variant", "retention", "acquisition"} <= set(header), header
    browser.evaluate(js("rowButtons(rowWith('leaderboard'))[1].click();"))  # its info
    caption = browser.wait_for(js("return document.querySelector('nav').innerText.includes('The leaderboard: every run') "
                                  "&& document.querySelector('nav').innerText;"), "Leaderboard: caption")
    assert "Wilson interval" in caption

    # a figure renders: the Pareto plot, shown in the content pane
    browser.evaluate(js("goHome();"))
    browser.wait_for(js("return !!linkLabelled('Leaderboard');"), "menu entry Leaderboard")
    browser.evaluate(js("linkLabelled('Leaderboard').click();"))
    browser.wait_for(js("return !!rowWith('retention x acquisition');"), "Leaderboard: the Pareto figure")
    browser.evaluate(js("rowButtons(rowWith('retention x acquisition'))[0].click();"))
    size = browser.wait_for(js("""
        const img = [...document.querySelectorAll('img')].find((i) => i.src.startsWith('data:image/png'));
        return img && img.complete && img.naturalWidth > 0 && [img.naturalWidth, img.naturalHeight];"""),
        "the Pareto figure")
    assert size[0] > 100 and size[1] > 100
    shot = browser.screenshot(tmp_path / "report.png")
    assert shot.read_bytes()[:4] == b"\x89PNG"

    errors = browser.console_errors()
    seen.update(leaderboard_csv_rows=len(csv.splitlines()) - 1, figure_size=size, screenshot=str(shot),
                console_errors=errors)
    (tmp_path / "seen.json").write_text(json.dumps(seen, indent=1))
    print(json.dumps(seen, indent=1))
    assert not errors, "console errors:\n" + "\n".join(errors)
