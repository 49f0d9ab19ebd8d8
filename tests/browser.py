"""A headless Chromium driven through Selenium and Debian's chromedriver, for the report's browser tests:
nothing is downloaded (no Selenium Manager: the driver's path is given), every request the page makes is
read from the browser's own performance log, and scripts can be switched off."""
from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if CHROMIUM is None:
        return "Chromium is not installed (apt-get install chromium chromium-driver; .ci/run does)"
    if CHROMEDRIVER is None:
        return "chromedriver is not installed (apt-get install chromium-driver; .ci/run does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


@contextmanager
def browser(scripts: bool = True, width: int = 1366, height: int = 900):
    """A headless Chromium (scripts on or off) that logs every network event; closed on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--proxy-server=127.0.0.1:9", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    if not scripts:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def requests(driver) -> list[str]:
    """Every URL the page asked the network stack for since the last call (the browser's own log:
    Network.requestWillBeSent events), data: URIs left out."""
    out = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if not url.startswith("data:"):
                out.append(url)
    return out


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def open_page(driver, page: Path) -> None:
    driver.get(page.resolve().as_uri())


def start_view(driver, view):
    """Scroll `view` (a div.live) into sight, so that it draws, and wait until it has."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", view)
    WebDriverWait(driver, 20).until(lambda d: view.get_attribute("data-started") == "1")
    return view
