"""The HTML report in a real browser: Debian's ``chromium``, headless, driven over the
DevTools protocol on a pipe (--remote-debugging-pipe: NUL-separated JSON on fds 3 and 4,
stdlib only). The page must render without a console message, exception or failed load,
fetch nothing but itself, print to PDF, draw as many bars and points as the report has
rows and buckets, show the JSON report's numbers, and keep the attacker's markup as text.
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from tests import test_report_data as data
from tests.ingest_helpers import REPO, cli_env
from tests.realparts.fixtures import unavailable

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    """A headless browser; ``send`` a DevTools command, read the events it sent."""

    def __init__(self) -> None:
        if CHROMIUM is None:
            unavailable("chromium is not installed (apt-get install chromium)")
        self.profile = tempfile.mkdtemp(prefix="mt-chromium-")
        to_browser, self._to_browser = os.pipe()
        self._from_browser, from_browser = os.pipe()

        def pipes_at_3_and_4() -> None:
            # through fds above both (a pipe end may itself be 3 or 4): dup2 clears the
            # close-on-exec flag of the copy, never of an fd duplicated onto itself
            high_in, high_out = os.dup2(to_browser, 100), os.dup2(from_browser, 101)
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--remote-debugging-pipe", "--no-sandbox",
             "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--disable-sync",
             f"--user-data-dir={self.profile}", "about:blank"],
            close_fds=False, preexec_fn=pipes_at_3_and_4, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(to_browser)
        os.close(from_browser)
        self.events: list[dict] = []
        self._buffer = b""
        self._last = 0

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60) -> dict:
        self._last += 1
        message = {"id": self._last, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._last:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            self.events.append(self._read(deadline))

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise EOFError("chromium closed its pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def open(self, url: str) -> str:
        """A new tab showing ``url`` (loaded), with console, log and network followed."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target,
                                                      "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.send(f"{domain}.enable", session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session)
        return session

    def evaluate(self, session: str, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True}, session=session)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (OSError, TimeoutError, EOFError):
            pass
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    chromium = Chromium()
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict:
    """The HTML and JSON reports of the corpus, whole and the hostile node's, made by the
    command line from one SQLite database."""
    root = tmp_path_factory.mktemp("html")
    url = data.sqlite_with_corpus(root / 'events.db')
    (root / "empty.conf").write_text("[modsec-tools]\n")
    made = {}
    for name, extra in (("all", ()), ("hostile", ("--node", data.HOSTILE_NODE, "--top", "100"))):
        for form in ("html", "json"):
            done = subprocess.run(
                [sys.executable, "-m", "modsec_tools.cli", "report", "--config",
                 str(root / "empty.conf"), "--db", url, "--jails", "", "--format", form, *extra],
                cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            (root / f"{name}.{form}").write_text(done.stdout)
        made[name] = (root / f"{name}.html", json.loads((root / f"{name}.json").read_text()))
    return made


PROBLEMS = ("Runtime.consoleAPICalled", "Runtime.exceptionThrown", "Log.entryAdded",
            "Network.loadingFailed")


def _problems(browser: Chromium, session: str) -> list:
    return [e for e in browser.events if e.get("sessionId") == session
            and e.get("method") in PROBLEMS]


def _requests(browser: Chromium, session: str) -> list[str]:
    return [e["params"]["request"]["url"] for e in browser.events
            if e.get("sessionId") == session and e.get("method") == "Network.requestWillBeSent"]


def _at(document: dict, path: str):
    value = document
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


FIGURES = """JSON.stringify([...document.querySelectorAll('[data-key]')].map(
    e => [e.dataset.key, e.dataset.value === undefined ? null : e.dataset.value,
          e.tagName.toLowerCase() === 'rect' ? null : e.textContent]))"""
COUNTS = """JSON.stringify({
  buckets: document.querySelectorAll('svg.timeline g.bucket').length,
  points: +document.querySelector('svg.timeline').dataset.points,
  segments: document.querySelectorAll('svg.timeline rect.bar').length,
  clients: document.querySelectorAll('svg.clients rect.bar').length,
  rules: document.querySelectorAll('svg.rules rect.bar').length,
  targets: document.querySelectorAll('svg.targets rect.bar').length,
  statuses: document.querySelectorAll('svg.statuses rect.bar').length,
  svgs: document.querySelectorAll('svg').length,
  scripts: document.scripts.length,
  images: document.images.length + document.querySelectorAll('iframe,object,embed,link').length,
  handlers: [...document.querySelectorAll('*')].filter(
      e => [...e.attributes].some(a => a.name.startsWith('on'))).length,
  width: document.documentElement.scrollWidth,
  text: document.body.innerText})"""


@pytest.mark.parametrize("name", ["all", "hostile"])
def test_page_renders_the_json_figures(browser, pages, name):
    path, document = pages[name]
    session = browser.open(path.as_uri())
    counts = json.loads(browser.evaluate(session, COUNTS))
    points = document["timeline"]["points"]
    assert counts["buckets"] == counts["points"] == len(points) > 0
    assert counts["segments"] == sum(1 for p in points for verdict in ("blocked", "detected",
                                                                       "passed") if p[verdict])
    for section in ("clients", "rules", "targets", "statuses"):
        assert counts[section] == len(document[section]) > 0, section
    assert counts["svgs"] == 5
    # every figure the page shows is the JSON report's, as value and as printed text
    shown = json.loads(browser.evaluate(session, FIGURES))
    assert len(shown) > 50
    for key, value, text in shown:
        wanted = _at(document, key)
        if value is not None:
            assert int(value) == wanted, key
        if text is not None:
            assert text.replace(",", "") == str(wanted), (key, text)
    pdf = base64.b64decode(browser.send("Page.printToPDF", {}, session=session)["data"])
    assert pdf.startswith(b"%PDF") and len(pdf) > 10_000
    assert _problems(browser, session) == []
    assert _requests(browser, session) == [path.as_uri()]        # nothing fetched: offline


def test_hostile_strings_stay_text(browser, pages):
    path, document = pages["hostile"]
    session = browser.open(path.as_uri())
    counts = json.loads(browser.evaluate(session, COUNTS))
    assert counts["scripts"] == 0 and counts["images"] == 0 and counts["handlers"] == 0
    assert counts["svgs"] == 5                            # ours alone: none from a Host header
    for text in (data.PAYLOADS["host"], data.PAYLOADS["formula_host"], data.SCRIPT,
                 data.PAYLOADS["uri"].split("?")[0]):
        assert text in counts["text"], text
    assert _problems(browser, session) == []               # no CSP violation either
    assert _requests(browser, session) == [path.as_uri()]
    source = path.read_text()
    assert data.SCRIPT not in source and "<svg onload" not in source
    assert source.count("<script") == 0


def test_sample_page(browser):
    """docs/sample-report.html, the page of the corpus the README shows (made again by
    ``python3 -m tests.test_report_data docs/sample-report.html``), opens as cleanly."""
    sample = REPO / "docs" / "sample-report.html"
    session = browser.open(sample.as_uri())
    counts = json.loads(browser.evaluate(session, COUNTS))
    assert counts["svgs"] == 5 and counts["scripts"] == 0 and counts["buckets"] > 0
    assert "127.0.1.70" in counts["text"]
    assert _problems(browser, session) == []
    assert _requests(browser, session) == [sample.as_uri()]
