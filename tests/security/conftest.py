"""The security suite: real mitmdump processes in front of real upstream servers, attacked.

It reuses the integration harness (tests/integration/harness.py) and its fixtures; the upstreams
here are servers that resolve paths themselves (aiohttp, http.server, a WSGI server), so a test
sees what the upstream really made of what the gateway sent.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.conftest import make_upstream, pytest_runtest_makereport, start_proxy, upstream  # noqa: F401 (fixtures)
from tests.security.servers import FileServer, start_file_servers

pytestmark = pytest.mark.integration


@pytest.fixture
def file_servers() -> Iterator[list[FileServer]]:
    """One server of each kind (aiohttp, http.server, wsgiref), each serving the same tree."""
    servers = start_file_servers()
    yield servers
    for server in servers:
        server.stop()
