"""The live status page in a real browser: headless Chromium driven by Selenium loads `/` of a
running `aimsnap run --http` with two real nodes, finds the policy and the AIM set, and sees the
policy turn red (breached) after the destination is killed, without a reload; screenshots go to
the test's directory. Also /api/status, /metrics, /healthz, the token, and the HTML report."""

import json
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from ..cli import aimsnap
from .test_apply import points_site
from .test_run import wait_for

pytestmark = pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                                reason="needs chromium and chromium-driver (make deps)")
OBJECTIVE = 6


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,900"):
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except urllib.error.URLError:
        return 0, b""  # not serving yet


def test_the_status_page_turns_red_without_a_reload(pair, tmp_path):
    from selenium.webdriver.common.by import By
    path = tmp_path / "site.yaml"
    path.write_text(points_site(pair, OBJECTIVE))
    db = str(tmp_path / "o.db")
    (tmp_path / "page.token").write_text("page-token-0123456789\n")
    assert aimsnap("apply", str(path)).code == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", str(path), "--db", db, "--http",
                             f"127.0.0.1:{port}", "--http-token-file", str(tmp_path / "page.token")],
                            stdout=log, stderr=subprocess.STDOUT)
    base, token = f"http://127.0.0.1:{port}", "page-token-0123456789"
    driver = None
    try:
        wait_for(lambda: _get(base + "/healthz", token)[0] == 200, 30)
        assert _get(base + "/api/status")[0] == 401  # the token is needed
        wait_for(lambda: any(p["recovery_point"] for p in json.loads(_get(base + "/api/status", token)[1])["policies"]),
                 30)
        st = json.loads(_get(base + "/api/status", token)[1])
        assert st["orchestrator"] == "running" and st["policies"][0]["state"] == "ok"
        assert b"aimsnap_runs_total" in _get(base + "/metrics", token)[1]
        driver = browser()
        driver.get(f"{base}/?token={token}")
        row = lambda: driver.find_elements(By.CSS_SELECTOR, '#policies tr[data-key="points"]')  # noqa: E731
        wait_for(lambda: row() and row()[0].get_attribute("class") == "ok", 20)
        try:
            wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, '#aim_sets tr[data-key="v-aim"]'), 20)
        except AssertionError:
            raise AssertionError((_get(base + "/api/status", token), driver.page_source[-3000:])) from None
        driver.save_screenshot(str(tmp_path / "status-ok.png"))
        pair.dst.kill(signal.SIGKILL)
        loaded = driver.execute_script("return performance.timeOrigin")
        wait_for(lambda: row()[0].get_attribute("class") == "breached", OBJECTIVE + 25)
        assert driver.execute_script("return performance.timeOrigin") == loaded  # the same page: no reload
        cell = row()[0].find_elements(By.TAG_NAME, "td")[1]
        assert cell.text == "breached" and cell.value_of_css_property("color") == "rgba(183, 28, 28, 1)"
        wait_for(lambda: "rpo_breached" in driver.find_element(By.ID, "alerts").text, 20)
        driver.save_screenshot(str(tmp_path / "status-breached.png"))
        pair.dst.start()
        # the report of the same store, in the same browser
        report = tmp_path / "report.html"
        assert aimsnap("report", "--db", db, "--html", str(report)).code == 0
        driver.get(report.as_uri())
        assert "aimsnap report" in driver.find_element(By.TAG_NAME, "h1").text
        driver.save_screenshot(str(tmp_path / "report.png"))
    finally:
        if driver is not None:
            driver.quit()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        log.close()
        shot_dir = __import__("os").environ.get("AIMSNAP_SCREENSHOTS")
        if shot_dir:  # keep them where a person can look (the test's own directory goes away)
            for f in tmp_path.glob("*.png"):
                shutil.copy(f, shot_dir)
