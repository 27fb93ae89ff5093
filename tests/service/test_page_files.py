"""The operator page and the API docs pages over HTTP: every file they name is the service's own.

No browser needed (test_operator_page.py drives them in Chromium): the HTML and JS modules are
read for the URLs they load, and each must be a path on this service that answers 200.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest

from service.api.docs import REDOC_POLICY
from service.api.page import CONTENT_SECURITY_POLICY, STATIC_DIR
from tests.service.conftest import assert_error


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value and not (tag == "a" and name == "href"):
                self.urls.append(value)


def loaded_urls(html: str) -> list[str]:
    """What a page loads (scripts, styles, icons), not the links a person may follow."""
    parser = _Links()
    parser.feed(html)
    return parser.urls


@pytest.mark.parametrize("page", ["/", "/docs", "/redoc"])
def test_pages_load_only_the_services_own_files(client, page):
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    urls = loaded_urls(response.text)
    assert len(urls) >= 2  # a script and a style sheet or icon at least
    for url in urls:
        absolute = urljoin(f"http://testserver{page}", url)
        assert urlsplit(absolute).netloc == "testserver", url
        assert client.get(absolute).status_code == 200, url


def test_the_docs_favicon_is_served_locally(client):
    for page in ("/docs", "/redoc"):
        [icon] = [u for u in loaded_urls(client.get(page).text) if "favicon" in u]
        assert icon.startswith("/static-offline-docs/")
        assert client.get(icon).headers["content-type"] == "image/png"


def test_every_js_module_import_is_a_served_file(client):
    modules = sorted((STATIC_DIR / "js").glob("*.js"))
    assert modules
    for module in modules:
        for name in re.findall(r'from\s+"(\./[^"]+)"', module.read_text(encoding="utf-8")):
            assert client.get(f"/static/js/{name[2:]}").status_code == 200, (module.name, name)


def test_the_page_and_redoc_forbid_other_origins(client):
    page = client.get("/")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY
    assert client.get("/redoc").headers["content-security-policy"] == REDOC_POLICY
    assert "img-src 'self' data:;" in REDOC_POLICY


def test_a_missing_static_file_is_a_404_in_the_error_shape(client):
    assert_error(client.get("/static/nothing.js"), 404, "not_found")
