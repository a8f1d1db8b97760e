"""The dashboard in headless Chromium (Debian's ``chromium``, driven by Playwright without a
browser download) against a real server process: the login, then models, versions, aliases
with history and lineage, the fleet, drift over time as SVG charts, and the federated runs.

Screenshots go to ``$EDGEFLEET_TEST_OUTPUT_DIR/dashboard`` (default ``var/test-output/dashboard``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgefleet.datasets import Dataset
from edgefleet.drift.accumulator import DriftAccumulator
from edgefleet.plan import PlanManifest
from tests.server.processes import ADMIN, ENROL_TOKEN, Proc, publish, set_alias, start_server

pytestmark = pytest.mark.slow
MODEL = "digits-dash"
REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
OUT = Path(os.environ.get("EDGEFLEET_TEST_OUTPUT_DIR", REPO / "var" / "test-output")) / "dashboard"


def _chromium() -> Path:
    """Debian's chromium, installed once when missing (the browser tools' own downloads need
    the internet)."""
    if not CHROMIUM.exists():
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.fail("/usr/bin/chromium is missing: apt-get install chromium")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        done = subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], env=env,
                              capture_output=True, timeout=600, check=False)
        if done.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True,
                           timeout=300, check=False)
            subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], env=env,
                           capture_output=True, timeout=600, check=True)
    return CHROMIUM


@dataclass
class Site:
    server: Proc
    devices: list[str]


def _lineage(parent: int, run: str, rnd: int, acc: float) -> dict[str, object]:
    return {"metrics": {"holdout.accuracy": acc},
            "lineage": {"parent_version": parent, "federated_run": run, "federated_round": rnd,
                        "num_clients": 3, "strategy": "fedavg"}}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, digits_plan_dir: Path,
         digits_data: Dataset) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("dashboard")
    server = start_server(root, f"sqlite:///{root / 'dash.db'}")
    try:
        with httpx.Client(base_url=server.url, headers=ADMIN, timeout=60) as admin:
            assert publish(admin, MODEL, digits_plan_dir) == 1
            set_alias(admin, MODEL, "production", 1)
            assert publish(admin, MODEL, digits_plan_dir, plan_from=1,
                           metadata=_lineage(1, "run-7", 1, 0.83)) == 2
            assert publish(admin, MODEL, digits_plan_dir, plan_from=1,
                           metadata=_lineage(2, "run-7", 2, 0.88)) == 3
            set_alias(admin, MODEL, "canary", 3)
            set_alias(admin, MODEL, "production", 2)
            r = admin.post("/api/v1/rollouts", json={
                "model": MODEL, "candidate": 3, "strategy": "canary",
                "steps": [{"percent": 25, "bake_s": 600}, {"percent": 100, "bake_s": 600}],
                "reason": "dashboard test"})
            assert r.status_code == 201, r.text
            reference = PlanManifest.model_validate_json(
                (digits_plan_dir / "manifest.json").read_text()).reference
            assert reference is not None
            devices = [f"dash-{i}" for i in range(3)]
            now = datetime.now(UTC)
            x = digits_data.x_test
            for i, device in enumerate(devices):
                r = httpx.post(f"{server.url}/api/v1/devices/enroll", json={
                    "enrollment_token": ENROL_TOKEN, "device_id": device, "model": MODEL})
                assert r.status_code == 201, r.text
                auth = {"Authorization": f"Bearer {r.json()['device_token']}"}
                for w in range(6):  # six 5-minute windows; device 0 drifts more and more
                    acc = DriftAccumulator(reference, model=MODEL, version=2)
                    shift = 2.5 * w if i == 0 else 0.0
                    rows = x[(w * 40) % 300:(w * 40) % 300 + 60]
                    acc.update(np.clip(rows + shift, 0, 16))
                    start = now - timedelta(minutes=5 * (6 - w))
                    report = {"idempotency_key": uuid.uuid4().hex, "model": MODEL, "version": 2,
                              "window_start": start.isoformat(),
                              "window_end": (start + timedelta(minutes=5)).isoformat(),
                              "inference": {"local": 60},
                              "drift": acc.to_summary().model_dump(mode="json")}
                    r = httpx.post(f"{server.url}/api/v1/devices/{device}/telemetry",
                                   json=report, headers=auth)
                    assert r.status_code == 201, r.text
        yield Site(server, devices)
    finally:
        server.stop()


def test_overview_needs_the_admin_login(site: Site) -> None:
    url = site.server.url
    assert httpx.get(f"{url}/dashboard/api/overview").status_code == 401
    assert httpx.get(f"{url}/dashboard/api/overview",
                     cookies={"edgefleet_session": "ops.9999999999.forged"}).status_code == 401
    r = httpx.post(f"{url}/dashboard/login", data={"key": "wrong-key-123"})
    assert r.status_code == 303 and "denied" in r.headers["location"]
    assert "set-cookie" not in r.headers
    page = httpx.get(f"{url}/dashboard")
    assert page.status_code == 200 and 'action="/dashboard/login"' in page.text
    data = httpx.get(f"{url}/dashboard/api/overview", headers=ADMIN).json()
    (model,) = [m for m in data["models"] if m["name"] == MODEL]
    assert [v["version"] for v in model["versions"]] == [3, 2, 1]
    production = next(a for a in model["aliases"] if a["alias"] == "production")
    assert [(e["from_version"], e["to_version"]) for e in production["history"]] == [
        (1, 2), (None, 1)]
    assert model["drift"]["version"] == 2 and len(model["drift"]["windows"]) >= 5
    assert model["drift"]["features"]
    assert [r["version"] for r in data["runs"][0]["rounds"]] == [2, 3]
    assert sorted(d["id"] for d in data["devices"]) == site.devices
    assert httpx.get(f"{url}/dashboard/static/../main.py").status_code == 404


def test_dashboard_in_headless_chromium(site: Site) -> None:
    from playwright.sync_api import sync_playwright

    url = site.server.url
    OUT.mkdir(parents=True, exist_ok=True)
    requested: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(_chromium()),
                                     args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda req: requested.append(req.url))
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{url}/dashboard")
            page.screenshot(path=str(OUT / "01-login.png"))
            page.fill("#key", "not-the-key-1")
            page.click("#sign-in")
            page.wait_for_selector("#denied:not([hidden])")
            page.fill("#key", ADMIN["X-Admin-Key"])
            page.click("#sign-in")
            page.wait_for_selector("body[data-loaded=true]", timeout=30000)
            assert page.evaluate("document.cookie") == ""  # the session cookie is HttpOnly
            models = page.inner_text("#models")
            assert MODEL in models and "run-7 r2" in models and "canary" in models
            assert page.locator(f'article.model[data-model="{MODEL}"] svg.lineage .edge'
                                ).count() == 2  # v1 -> v2 -> v3
            history = page.inner_text("table.aliases")
            assert "v1 → v2" in history and "∅ → v1" in history
            drift = page.locator(f'article.drift[data-model="{MODEL}"]')
            assert drift.locator("svg.chart").count() == 2
            assert drift.locator("svg.chart path.series").count() >= 2  # fleet + features
            assert drift.locator("svg.chart circle").count() >= 10
            fleet = page.inner_text("#fleet")
            assert all(d in fleet for d in site.devices) and "3 devices" in fleet
            assert "run-7" in page.inner_text("#runs")
            rollout = page.locator("#rollouts article.rollout")
            assert rollout.count() == 1
            text = rollout.inner_text()
            assert "v3 over v2" in text and "canary" in text and "25 %" in text, text
            assert "start" in rollout.locator("table.timeline").inner_text()
            page.click("#verify-audit")
            page.wait_for_selector("#audit-verify .badge.ok")
            assert "rollout.start" in page.inner_text("#audit-body")
            page.screenshot(path=str(OUT / "02-dashboard.png"), full_page=True)
            drift.screenshot(path=str(OUT / "03-drift.png"))
            assert not errors, errors
        finally:
            browser.close()
    assert requested and all(u.startswith(url) for u in requested), requested  # no CDN
    for name in ("01-login.png", "02-dashboard.png", "03-drift.png"):
        assert (OUT / name).stat().st_size > 5000
