"""A REAL headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by
Selenium, for the console's browser tests (tests/console, tests/e2e/test_console_live.py).

Why Selenium with Debian's chromium-driver rather than Playwright: the driver comes from the
same Debian source package as the browser, so the two always match, and nothing else runs:
Playwright's Python package drives the browser through a Node.js program of its own (a
Node runtime in the test environment) and is tested against its own Chromium builds,
which cannot be downloaded here.

``Browser`` starts Chromium (as root it needs ``--no-sandbox``) with a fresh profile,
downloads going to ``downloads``; ``quit()`` stops it (chromedriver and the browser, by
the driver's own shutdown). Every wait is bounded.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_S = 20.0
ARGUMENTS = (
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,900",
)

T = TypeVar("T")


class BrowserError(RuntimeError):
    """The browser could not be started or did not show what was awaited."""


class Browser:
    """One headless Chromium with its own profile and download directory."""

    def __init__(self, downloads: Path) -> None:
        for binary in (CHROMIUM, CHROMEDRIVER):
            if not binary.exists():
                raise BrowserError(
                    f"{binary} is missing: install Debian's chromium and chromium-driver "
                    "(scripts/asterisk-sandbox does, as root)"
                )
        self.downloads = downloads
        self.profile = Path(tempfile.mkdtemp(prefix="cg-chromium-"))
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for argument in (*ARGUMENTS, f"--user-data-dir={self.profile}"):
            options.add_argument(argument)
        options.add_experimental_option(
            "prefs",
            {
                "download.default_directory": str(downloads),
                "download.prompt_for_download": False,
            },
        )
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        try:
            self.driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
        except WebDriverException:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise
        self.driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def get(self, url: str) -> None:
        self.driver.get(url)

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def run(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, what: str, test: Callable[[], T | None], within_s: float = WAIT_S) -> T:
        """``test()``'s first true value, polled every 50 ms for at most ``within_s``."""
        deadline = time.monotonic() + within_s
        last: Exception | None = None
        for _ in range(int(within_s / 0.05) + 1):
            try:
                value = test()
                if value:
                    return value
            except WebDriverException as exc:  # the element is being replaced: try again
                last = exc
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        raise BrowserError(f"not seen within {within_s:.0f} s: {what} (last error: {last})")

    def text(self, css: str, within_s: float = WAIT_S) -> str:
        """The text of the first element matching ``css`` once it has some."""
        return self.wait(
            f"text in {css}",
            lambda: (found := self.find_all(css)) and found[0].text.strip(),
            within_s,
        )

    def fill(self, css: str, value: str) -> None:
        element = self.find(css)
        element.clear()
        element.send_keys(value)

    def set_value(self, css: str, value: str) -> None:
        """Set an input whose typing is locale-dependent (datetime-local, select)."""
        self.run(
            "const el = document.querySelector(arguments[0]); el.value = arguments[1];"
            "el.dispatchEvent(new Event('change', {bubbles: true}));",
            css,
            value,
        )

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path

    def errors(self) -> list[str]:
        """The page's script errors since the last call (an answer with an error status,
        such as a refused sign-in, is not one)."""
        return [
            entry["message"]
            for entry in self.driver.get_log("browser")
            if entry.get("level") == "SEVERE" and "Failed to load resource" not in entry["message"]
        ]

    def sign_in(self, base: str, token: str) -> None:
        """Open the console and sign in with ``token`` (unless this browser's session is
        still live); wait for the navigation."""
        self.get(base + "/")

        def form_or_nav() -> str | None:
            if self.find("#nav").is_displayed():
                return "signed in"
            found = self.find_all("#token")
            return "form" if found and found[0].is_displayed() else None

        if self.wait("the sign-in form or the pages", form_or_nav) == "signed in":
            return
        self.fill("#token", token)
        self.find("#signin-form button").click()
        self.wait("the navigation", lambda: self.find("#nav").is_displayed())

    def downloaded(self, name: str, within_s: float = WAIT_S) -> Path:
        """The file ``name`` once the browser has finished downloading it."""
        path = self.downloads / name
        return self.wait(
            f"download {name}",
            lambda: (
                path if path.exists() and not list(self.downloads.glob("*.crdownload")) else None
            ),
            within_s,
        )
