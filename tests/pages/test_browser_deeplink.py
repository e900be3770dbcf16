"""Issue 27, item 16: a deep-link reload (a page's address opened directly, then reloaded) in Chromium.

Streamlit 1.67's client looks for its server under the page's path before the root: it asks for
`/train/_stcore/health` and `/train/_stcore/host-config`, which Streamlit's server answers 404 on purpose, then
`/_stcore/...`, which answer (upstream streamlit/streamlit#7074, open; no setting or documented route avoids it
without serving the app another way: the report of issue 27's last items gives the source lines). This test keeps
that to exactly those two probes: every other request of a deep-link load and reload succeeds, and the page draws.
"""
from urllib.parse import urlparse

import pytest

from tests.helpers import CHROMIUM, assert_no_exception, serve_app, wait_until_settled

# the client's guesses under the page's path, answered 404 by Streamlit by design (see the module's docstring)
STREAMLIT_PROBES = ("/_stcore/health", "/_stcore/host-config")


@pytest.fixture(scope="module")
def empty_app(tmp_path_factory):
    with serve_app(tmp_path_factory.mktemp("deeplink") / "runs") as url:
        yield url


@pytest.mark.parametrize("path", ["train", "runs", "search"])
def test_a_deep_link_reload_fails_no_request_but_streamlits_own_probes(browser, empty_app, path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing")
    context = browser.new_context(base_url=empty_app, viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    failed = []
    page.on("requestfailed", lambda request: failed.append(f"{request.url} {request.failure}"))
    page.on("response", lambda response: failed.append(f"{response.url} {response.status}")
            if response.status >= 400 else None)
    try:
        for _ in range(2):  # the link opened, then reloaded
            if _ == 0:
                page.goto(f"/{path}")
            else:
                page.reload()
            wait_until_settled(page)
            page.locator("h1").first.wait_for()
            assert_no_exception(page)
        assert urlparse(page.url).path == f"/{path}"  # still the page the link named
        probes = [f"{empty_app}/{path}{probe} 404" for probe in STREAMLIT_PROBES]
        assert [line for line in failed if line not in probes] == []
    finally:
        context.close()
