"""Model cards over HTTP (JSON, Markdown, HTML; limitations) and the dashboard's audit panel and
card page, on SQLite and PostgreSQL."""

from __future__ import annotations

from tests.server.support import ADMIN, Api

CARD = "/api/v1/models/digits/versions/{v}/card"


def test_the_card_route_serves_json_markdown_and_html(api: Api) -> None:
    c = api.client
    v1 = api.production()
    r = c.get(CARD.format(v=v1), headers=ADMIN)
    assert r.status_code == 200, r.text
    card = r.json()
    assert card["model"] == "digits" and card["version"] == v1
    assert card["lineage"]["kind"] == "authored" and card["lineage"]["created_by"] == "admin:alice"
    assert card["promotion"]["alias_moves"][0]["alias"] == "production"
    md = c.get(CARD.format(v=v1), params={"format": "markdown"}, headers=ADMIN)
    assert md.headers["content-type"].startswith("text/markdown")
    assert md.text.startswith(f"# Model card: digits v{v1}")
    page = c.get(CARD.format(v=v1), params={"format": "html"}, headers=ADMIN)
    assert page.headers["content-type"].startswith("text/html") and "<h2>Plan</h2>" in page.text


def test_limitations_are_written_audited_and_bad_input_refused(api: Api) -> None:
    c = api.client
    v1 = api.production()
    url = CARD.format(v=v1) + "/limitations"
    r = c.put(url, json={"limitations": "Not validated on rotated digits."}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["limitations"] == "Not validated on rotated digits."
    assert r.json()["limitations_by"] == "admin:alice"
    records = c.get("/api/v1/audit", params={"action": "card.limitations"}, headers=ADMIN).json()
    assert [(x["actor"], x["target"]) for x in records["items"]] == [
        ("admin:alice", f"digits/{v1}")]
    refused = [
        c.put(url, json={"limitations": "x" * 4001}, headers=ADMIN),
        c.put(url, json={"limitations": "bad\x00byte"}, headers=ADMIN),
        c.put(url, json={"limits": "typo"}, headers=ADMIN),
        c.put(url, json={"limitations": "no key"}),
        c.put(CARD.format(v=99) + "/limitations", json={"limitations": "x"}, headers=ADMIN),
    ]
    assert [x.status_code for x in refused] == [422, 422, 422, 401, 404]
    again = c.get("/api/v1/audit", params={"action": "card.*"}, headers=ADMIN).json()
    assert len(again["items"]) == 1


def test_card_route_refusals(api: Api) -> None:
    c = api.client
    api.production()
    assert c.get(CARD.format(v=1)).status_code == 401
    assert c.get(CARD.format(v=7), headers=ADMIN).status_code == 404
    assert c.get(CARD.format(v=1), params={"format": "pdf"}, headers=ADMIN).status_code == 422
    assert c.get(CARD.format(v="01"), headers=ADMIN).status_code == 422
    assert c.get("/api/v1/models/nope/versions/1/card", headers=ADMIN).status_code == 404


def test_dashboard_audit_panel_and_card_page(api: Api) -> None:
    c = api.client
    v1 = api.production()
    assert c.get("/dashboard/api/audit").status_code == 401
    assert c.get(f"/dashboard/card/digits/{v1}").status_code == 401
    panel = c.get("/dashboard/api/audit", params={"limit": 2}, headers=ADMIN).json()
    assert [r["action"] for r in panel["records"]] == ["alias.move", "version.publish"]
    assert panel["head"]["seq"] == panel["records"][0]["seq"]
    verified = c.get("/dashboard/api/audit/verify", headers=ADMIN).json()
    assert verified["ok"] and verified["checked"] == panel["head"]["seq"]
    login = c.post("/dashboard/login", data={"key": ADMIN["X-Admin-Key"]},
                   follow_redirects=False)
    assert login.status_code == 303
    page = c.get(f"/dashboard/card/digits/{v1}")  # the session cookie, as a browser sends it
    assert page.status_code == 200 and f"Model card: digits v{v1}" in page.text
    assert "script-src" not in page.headers["content-security-policy"]
    assert c.get("/dashboard/card/digits/9").status_code == 404
    index = c.get("/dashboard")
    assert 'id="audit"' in index.text
    script = c.get("/dashboard/static/app.js").text
    assert "/dashboard/card/" in script and "/dashboard/api/audit" in script
