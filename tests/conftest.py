"""Tests that read the external fixtures (../shared/fixtures, see the README) skip, with that reason shown, in a
checkout that has none; `.ci/run` refuses to run without them, so CI never skips them.

A test is taken to need the fixtures when it stops on a missing file inside the fixtures folder (or asserts that one
is there) while that folder is absent; with the folder present the same error is a plain failure.
"""

from __future__ import annotations

import http.server
import threading

import pytest

from tests.support.fixtures import FIXTURES_DIR

REASON = f"the shared fixtures are absent ({FIXTURES_DIR}; see the README's 'Test fixtures')"


def _needs_fixtures(excinfo) -> bool:
    if excinfo is None or FIXTURES_DIR.is_dir():
        return False
    error = excinfo[1]  # a missing file, or a test's own "fixture missing" assertion, naming the absent folder
    return isinstance(error, (FileNotFoundError, AssertionError)) and str(FIXTURES_DIR) in str(error)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    outcome = yield
    if _needs_fixtures(outcome.excinfo):
        outcome.force_exception(pytest.skip.Exception(REASON, _use_item_location=True))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    outcome = yield
    if _needs_fixtures(outcome.excinfo):
        outcome.force_exception(pytest.skip.Exception(REASON, _use_item_location=True))


@pytest.fixture
def listener():
    """(url, seen): a local HTTP listener that records the path of every request it gets, for tests that show
    nothing is fetched (schema `$ref`s); it answers any GET with a JSON schema, so a fetch would succeed."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.path)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"type": "string"}')

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()
