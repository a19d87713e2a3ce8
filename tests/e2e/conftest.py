"""Real-browser fixtures: a `vcell serve` server on a bundle and headless Chromium (Playwright).

The bundle is the ``e2e_bundle`` fixture (the small generated bundle by default); a test
module can override it to run the same checks on another bundle, e.g. the COVID one::

    @pytest.fixture(scope="module")
    def e2e_bundle(covid_bundle):
        return covid_bundle

Chromium is Debian's ``/usr/bin/chromium`` (``playwright install`` cannot download browsers
here). Without it the tests skip with a message, except on CI (``CI=true``) where they fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("VCELL_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
SERVER_START_TIMEOUT = 120.0


def _unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _vcell() -> list[str]:
    script = Path(sys.executable).with_name("vcell")
    if script.exists():
        return [str(script)]
    found = shutil.which("vcell")
    return [found] if found else [sys.executable, "-m", "engine.cli"]


@contextmanager
def serve_bundle(bundle: str | os.PathLike, log_path: Path) -> Iterator[str]:
    """Run ``vcell serve BUNDLE --headless --port P`` until the block ends; yield its URL.

    The server runs in its own process group, which is terminated (then killed) on exit, so
    the Streamlit child process of ``vcell serve`` never outlives the test.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(log_path, "w")
    proc = subprocess.Popen([*_vcell(), "serve", str(bundle), "--headless", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vcell serve exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vcell serve did not answer within {SERVER_START_TIMEOUT:.0f} s: "
                                   f"{log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright (skips, or fails on CI, when unavailable)."""
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is absent: install Debian's chromium (apt-get install -y chromium) "
                     "to run the real-browser tests")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed: pip install playwright")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def e2e_bundle(small_bundle):
    """The bundle the browser tests serve (override in a module to test another bundle)."""
    return small_bundle


@pytest.fixture(scope="module")
def app_url(e2e_bundle, tmp_path_factory) -> Iterator[str]:
    """URL of a running ``vcell serve`` on ``e2e_bundle``."""
    log_path = tmp_path_factory.mktemp("serve") / "vcell-serve.log"
    with serve_bundle(e2e_bundle, log_path) as url:
        yield url


@pytest.fixture
def page(browser):
    """A fresh browser page with a large viewport (screenshots show whole pages)."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    """Where page screenshots go (gitignored)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
