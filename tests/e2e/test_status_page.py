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
    (tmp_path / "page.token").chmod(0o600)
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
        # read in one script: the page redraws every 2 s, an element found a moment ago may be gone
        state = lambda: driver.execute_script(  # noqa: E731
            "const r = document.querySelector('#policies tr[data-key=\"points\"]'); return r && r.dataset.state")
        cell = lambda: driver.execute_script(  # noqa: E731
            "const td = document.querySelector('#policies tr[data-key=\"points\"] td:nth-child(2)');"
            "return td && [td.textContent, getComputedStyle(td).color]")
        wait_for(lambda: state() == "ok", 20)
        try:
            wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, '#aim_sets tr[data-key$="/v-aim"]'), 20)
        except AssertionError:
            raise AssertionError((_get(base + "/api/status", token), driver.page_source[-3000:])) from None
        driver.save_screenshot(str(tmp_path / "status-ok.png"))
        pair.dst.kill(signal.SIGKILL)
        loaded = driver.execute_script("return performance.timeOrigin")
        wait_for(lambda: state() == "breached", OBJECTIVE + 25)
        assert driver.execute_script("return performance.timeOrigin") == loaded  # the same page: no reload
        assert cell() == ["breached", "rgb(183, 28, 28)"]
        wait_for(lambda: "rpo_breached" in driver.execute_script("return document.getElementById('alerts').textContent"),
                 20)
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


def _site(tmp_path, policies: int, sets: int, breached: set[str], failing: set[str], down: set[str]):
    """A status page over an outcome store written as the orchestrator writes it (``policies``
    policies ``volNNN-15m``, the ``breached`` ones 2 h old, the ``failing`` ones with a failed run)
    and a real watchdog's view of ``sets`` AIM sets ``setNNN`` (the ``down`` ones disconnected)."""
    from datetime import datetime, timedelta, timezone

    from orchestrator.schedule.watchdog import Watchdog
    from orchestrator.statuspage import StatusPage
    from orchestrator.store import Store, iso
    now = datetime.now(timezone.utc).replace(microsecond=0)
    store = Store(str(tmp_path / "o.db"))
    names = [f"vol{i:03d}-15m" for i in range(policies)]
    store.set_schedule([{"policy": n, "kind": "source-snapshot", "trigger": "every 15m",
                         "next_fire": iso(now + timedelta(minutes=7)), "rpo_objective": 1800.0} for n in names], now)
    for n in names:
        age = timedelta(hours=2) if n in breached else timedelta(minutes=9)
        store.record_run(n, "source-snapshot", "schedule", "ok", now - age)
        store.record_marker(None, n, "prod", {"aim_set": n, "id": 1, "state": "applied", "point": f"{n}.p",
                                              "issued_at": iso(now - age), "applied_at": iso(now - age)})
        if n in failing:
            store.record_run(n, "source-snapshot", "schedule", "failed", now - timedelta(minutes=1),
                             error="quiesce hook exited 1: fsfreeze: /srv/db: Device or resource busy")
    store.set_service(heartbeat=iso(now))
    set_names = [f"set{i:03d}" for i in range(sets)]
    infos = {s: {"state": "disconnected" if s in down else "replicating", "role": "source",
                 "lag_seconds": 0.4, "queued_bytes": 4096, "acked_seq": 1, "queued_entries": 0,
                 "last_error": "connection refused" if s in down else None} for s in set_names}
    dog = Watchdog(store, lambda: [("prod", s) for s in set_names],
                   lambda node: [dict(i, name=n) for n, i in infos.items()])
    dog.check(now)
    page = StatusPage("127.0.0.1:0", store, dog, clock=lambda: now)
    page.start()
    return page


def _keep_screenshots(tmp_path) -> None:
    shot_dir = __import__("os").environ.get("AIMSNAP_SCREENSHOTS")
    if shot_dir:
        for f in tmp_path.glob("*.png"):
            shutil.copy(f, shot_dir)


def test_a_site_of_sixty_policies_reads_on_one_screen(tmp_path):
    """Sixty policies and a hundred AIM sets: the banner counts the problems, they sort first,
    ``?problems`` shows only them, and the name filter narrows the tables."""
    from selenium.webdriver.common.by import By
    breached, failing = {"vol007-15m", "vol031-15m", "vol058-15m"}, {"vol020-15m", "vol044-15m"}
    page = _site(tmp_path, 60, 100, breached, failing, {"set013", "set077"})
    driver = browser()
    try:
        driver.set_window_size(1920, 1080)  # a wall screen
        driver.get(f"http://{page.address}/")
        banner = lambda: driver.find_element(By.ID, "banner").text  # noqa: E731
        wait_for(lambda: banner() == "7 problems", 20)  # 3 breached, 2 failing, 2 AIM sets disconnected
        rows = driver.find_elements(By.CSS_SELECTOR, "#policies tbody tr")
        assert len(rows) == 60
        first = [r.get_attribute("data-key") for r in rows[:5]]
        assert set(first) == breached | failing and first == sorted(first)  # problems first, by name
        assert [r.get_attribute("data-state") for r in rows[5:]] == ["ok"] * 55
        aims = driver.find_elements(By.CSS_SELECTOR, "#aim_sets tbody tr")
        assert [r.get_attribute("data-key") for r in aims[:2]] == ["prod/set013", "prod/set077"]
        assert "RPO breached" in driver.find_element(By.ID, "tiles").text
        assert driver.title.startswith("✖ 7")
        driver.save_screenshot(str(tmp_path / "status-sixty-policies.png"))
        driver.get(f"http://{page.address}/?problems")
        wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#policies tbody tr[data-key]")) == 5, 20)
        assert "55 more not shown (problems only)" in driver.find_element(By.ID, "policies").text
        assert len(driver.find_elements(By.CSS_SELECTOR, "#aim_sets tbody tr[data-key]")) == 2
        driver.save_screenshot(str(tmp_path / "status-problems-only.png"))
        driver.get(f"http://{page.address}/")
        box = driver.find_element(By.ID, "filter")
        wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#policies tbody tr[data-key]")) == 60, 20)
        box.send_keys("vol03")
        wait_for(lambda: [r.get_attribute("data-key") for r in
                          driver.find_elements(By.CSS_SELECTOR, "#policies tbody tr[data-key]")][:1] == ["vol031-15m"], 10)
        assert len(driver.find_elements(By.CSS_SELECTOR, "#policies tbody tr[data-key]")) == 10
    finally:
        driver.quit()
        page.close()
        _keep_screenshots(tmp_path)


def test_a_site_of_a_thousand_policies_loads_and_sorts_its_problems_first(tmp_path):
    """The scale issue's site: 1,000 policies and 1,000 AIM sets. The page renders every row,
    problems first, within seconds, and ``/api/status`` (what it polls) answers fast enough to
    poll; the filter still narrows."""
    import time

    from selenium.webdriver.common.by import By
    breached, failing = {"vol107-15m", "vol531-15m", "vol958-15m"}, {"vol020-15m"}
    page = _site(tmp_path, 1000, 1000, breached, failing, {"set013", "set777"})
    driver = browser()
    try:
        t0 = time.monotonic()
        _get(f"http://{page.address}/api/status")
        status_seconds = time.monotonic() - t0
        driver.set_window_size(1920, 1080)
        driver.get(f"http://{page.address}/")
        wait_for(lambda: driver.find_element(By.ID, "banner").text == "6 problems", 30)
        rows = driver.find_elements(By.CSS_SELECTOR, "#policies tbody tr[data-key]")
        assert len(rows) == 1000
        first = [r.get_attribute("data-key") for r in rows[:4]]
        assert first == sorted(breached | failing)
        aims = driver.find_elements(By.CSS_SELECTOR, "#aim_sets tbody tr[data-key]")
        assert len(aims) == 1000 and [r.get_attribute("data-key") for r in aims[:2]] == ["prod/set013", "prod/set777"]
        assert status_seconds < 5.0, status_seconds  # a page polling every few seconds must not queue up
        driver.save_screenshot(str(tmp_path / "status-thousand-policies.png"))
        driver.find_element(By.ID, "filter").send_keys("vol99")
        wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#policies tbody tr[data-key]")) == 10, 20)
    finally:
        driver.quit()
        page.close()
        _keep_screenshots(tmp_path)
