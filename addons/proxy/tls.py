"""TLS contexts for https targets (their requests and their health probes): built once per CA
file version and shared, since loading the CAs is the slow part."""

from __future__ import annotations

import functools
import os
import ssl


def target_ssl_context(tls_verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """Verified against the system CAs, or `ca_file`; `tls_verify: false` turns checking off."""
    if not tls_verify:
        return unverified_context()
    return verified_context(ca_file, file_stamp(ca_file) if ca_file else None)


@functools.lru_cache(maxsize=32)
def verified_context(ca_file: str | None, stamp: tuple[int, int] | None) -> ssl.SSLContext:
    """One context per CA file version, shared by every target that uses it: loading the CAs
    takes ~50 ms, paid once rather than per target and per reload. `stamp` (mtime, size) makes
    an edited CA file a new entry."""
    return ssl.create_default_context(cafile=ca_file)


@functools.lru_cache(maxsize=1)
def unverified_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def file_stamp(path: str) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_mtime_ns, status.st_size
