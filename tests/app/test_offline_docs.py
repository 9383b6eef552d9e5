"""The service's /docs (Swagger UI) and /redoc load nothing from outside the app: their assets come from a package."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urljoin

import pytest
from fastapi.testclient import TestClient

from app.main import DOCS_ASSETS, create_app
from app.settings import Settings

KEY = "docs-key-0123456789"
#: asset suffix -> (content type, fewest bytes a real one has)
KINDS = {
    ".js": ("javascript", 100_000),
    ".css": ("text/css", 10_000),
    ".png": ("image/png", 500),
}


@pytest.fixture(params=[False, True], ids=["local", "keyed"])
def client(request: pytest.FixtureRequest, settings: Settings) -> Iterator[TestClient]:
    """The app without and with API keys (the docs pages and assets are public either way, like /openapi.json)."""
    if request.param:
        settings = settings.model_copy(update={"api_keys": KEY})
    with TestClient(create_app(settings)) as c:
        yield c


def _references(html: str) -> list[str]:
    """Every URL a page loads: ``src``/``href`` attributes, the spec URL handed to the UI, and any absolute URL."""
    refs = re.findall(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']""", html)
    refs += re.findall(r"""\burl\s*:\s*["']([^"']+)["']""", html)
    refs += re.findall(r"""(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s"'<>)]*""", html)
    return refs


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_the_apps_own_assets(client: TestClient, page: str) -> None:
    res = client.get(page)
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("text/html")
    html = res.text
    assert not re.search(r"https?://", html), "the page names an outside URL"
    refs = _references(html)
    assets = [r for r in refs if r.startswith(DOCS_ASSETS + "/")]
    assert {r.rsplit(".", 1)[1] for r in assets} >= ({"js", "css", "png"} if page == "/docs" else {"js", "png"})
    assert "/openapi.json" in refs
    assert all(r.startswith("/") and not r.startswith("//") for r in refs), refs
    for ref in assets:
        asset = client.get(urljoin("http://testserver", ref))
        assert asset.status_code == 200, ref
        kind, least = KINDS["." + ref.rsplit(".", 1)[1]]
        assert kind in asset.headers["content-type"], (ref, asset.headers["content-type"])
        assert len(asset.content) >= least, ref
    assert client.get("/openapi.json").status_code == 200


def test_swagger_ui_asks_no_online_validator(client: TestClient) -> None:
    assert '"validatorUrl": null' in client.get("/docs").text


def test_keys_still_guard_the_api(settings: Settings) -> None:
    keyed = settings.model_copy(update={"api_keys": KEY})
    with TestClient(create_app(keyed)) as c:
        assert c.get("/api/v1/models").status_code == 401
        assert c.get(f"{DOCS_ASSETS}/swagger-ui.css").status_code == 200
