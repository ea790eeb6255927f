"""Drives the control plane's /ui page in headless Chromium (Debian's chromium and
chromedriver, through selenium) for tests/e2e/live_view.rs.

Usage: ui_check.py URL ARTIFACT_DIR DENIED_EDGE POLICY

1. Loads the page; waits for every shop workload on the graph and for DENIED_EDGE
   ("ns/a->ns/b") drawn as denied; screenshot ui-graph.png; prints READY.
2. Reads "GO <path>" on stdin; the test then makes a request to <path> that is denied;
   the row must appear in the violations table within 2 s, without a reload; screenshot
   ui-violation.png.
3. With the keyboard only (Tab until the edge's button has focus, then Enter), opens the
   edge and waits for POLICY among the policies that apply; reads the server's authz check
   of the edge's last request; tabs into the check form, types a path, Enter, and reads the
   answer; screenshot ui-edge.png.
4. Still by keyboard, picks SUGGEST_WORKLOAD in the suggestion view and runs it; reads the
   suggested policies and the diff summary; screenshot ui-suggest.png.
Prints one JSON line with what it measured, and exits 0; anything else fails.
"""

import json
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait


# The path typed into the edge's check form.
TYPED_PATH = "/typed-in-the-ui"
# The workload whose suggested policies the page shows.
SUGGEST_WORKLOAD = "shop/search"


def main() -> int:
    url, artifacts, denied_edge, policy = sys.argv[1:5]
    os.makedirs(artifacts, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1400",
                "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    # An explicit driver: selenium never downloads one.
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    result = {}
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 20)
        for node in ("shop/client", "shop/search", "shop/payments"):
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'[data-node="{node}"]'))
        selector = f'line.edge.denied[data-edge="{denied_edge}"]'
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, selector))
        result["allowed_edges"] = len(driver.find_elements(By.CSS_SELECTOR, "line.edge.allowed"))
        result["denied_edges"] = len(driver.find_elements(By.CSS_SELECTOR, "line.edge.denied"))
        driver.save_screenshot(os.path.join(artifacts, "ui-graph.png"))
        loads = driver.execute_script("return performance.getEntriesByType('navigation').length")
        print("READY", flush=True)

        line = sys.stdin.readline().split()
        assert line and line[0] == "GO", f"expected GO, got {line}"
        path = line[1]
        started = time.monotonic()
        row = f'#violations tr[data-path="{path}"]'
        WebDriverWait(driver, 2.0, poll_frequency=0.05).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, row))
        result["violation_seconds"] = round(time.monotonic() - started, 3)
        after = driver.execute_script("return performance.getEntriesByType('navigation').length")
        assert after == loads, "the page reloaded"
        cells = [td.text for td in driver.find_elements(By.CSS_SELECTOR, row + " td")]
        result["violation_row"] = cells
        driver.save_screenshot(os.path.join(artifacts, "ui-violation.png"))

        # Keyboard only: Tab to the edge's button, Enter (key events to the focused element,
        # as a keyboard sends them).
        for presses in range(1, 80):
            driver.switch_to.active_element.send_keys(Keys.TAB)
            focused = driver.execute_script("return document.activeElement.dataset.edge || ''")
            if focused == denied_edge:
                break
        else:
            raise AssertionError("the edge's button never took the focus with Tab")
        result["tab_presses"] = presses
        driver.switch_to.active_element.send_keys(Keys.ENTER)
        WebDriverWait(driver, 5).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, f'#detail-policies [data-policy="{policy}"]'))
        result["explain"] = driver.find_element(By.ID, "detail-explain").text
        result["server_check"] = driver.find_element(By.ID, "detail-check").text
        result["command"] = driver.find_element(By.ID, "detail-command").text

        # Still keyboard only: Tab into the check form's path field, type a path, Enter.
        for presses in range(1, 40):
            driver.switch_to.active_element.send_keys(Keys.TAB)
            if driver.execute_script("return document.activeElement.id") == "check-path":
                break
        else:
            raise AssertionError("the check form's path field never took the focus with Tab")
        field = driver.switch_to.active_element
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(TYPED_PATH)
        field.send_keys(Keys.ENTER)
        WebDriverWait(driver, 5).until(
            lambda d: TYPED_PATH in " ".join(e.text for e in d.find_elements(By.ID, "check-answer")))
        result["typed_check"] = driver.find_element(By.ID, "check-answer").text
        driver.execute_script("document.getElementById('check-answer').scrollIntoView(false)")
        driver.save_screenshot(os.path.join(artifacts, "ui-edge.png"))

        # The suggestion view, by keyboard: Tab to the workload picker, pick, Tab, Enter.
        for presses in range(1, 80):
            driver.switch_to.active_element.send_keys(Keys.TAB)
            if driver.execute_script("return document.activeElement.id") == "suggest-workload":
                break
        else:
            raise AssertionError("the workload picker never took the focus with Tab")
        Select(driver.switch_to.active_element).select_by_value(SUGGEST_WORKLOAD)
        driver.switch_to.active_element.send_keys(Keys.TAB)
        assert driver.execute_script("return document.activeElement.id") == "suggest-run"
        driver.switch_to.active_element.send_keys(Keys.ENTER)
        WebDriverWait(driver, 5).until(lambda d: d.find_elements(By.ID, "diff-summary"))
        result["suggestion"] = driver.find_element(By.ID, "suggestion").text
        result["diff_summary"] = driver.find_element(By.ID, "diff-summary").text
        driver.execute_script("document.getElementById('suggestion').scrollIntoView(true)")
        driver.save_screenshot(os.path.join(artifacts, "ui-suggest.png"))
        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        result["console_errors"] = [e.get("message") for e in errors]
    finally:
        driver.quit()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
