"""Passwords of the user store (addons.auth.users): salted scrypt hashes, checked off the event loop.

Only salted scrypt hashes are stored (`hashlib.scrypt`, n=2**14, r=8, p=1, a 16-byte random
salt, a 64-byte key), encoded `scrypt$n$r$p$salt$key` with standard base64. Passwords are
NFKC-normalized, must be 8 to 1024 characters at registration, and are compared with
`hmac.compare_digest`. Hashing runs on a small dedicated thread pool (bounded CPU and memory:
each hash needs 16 MiB), never on the event loop. A login for an unknown user spends the same
hashing work on a dummy hash, so the answer's timing does not tell which usernames exist.
Neither passwords, hashes nor tokens are ever logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import secrets
import threading
import unicodedata
from concurrent.futures import ThreadPoolExecutor

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024

_HASH_POOL: ThreadPoolExecutor | None = None
_HASH_POOL_GUARD = threading.Lock()


def _hash_pool() -> ThreadPoolExecutor:
    """Few workers: each scrypt hash holds 16 MiB and a CPU; the default executor stays free."""
    global _HASH_POOL
    with _HASH_POOL_GUARD:
        if _HASH_POOL is None:
            _HASH_POOL = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="backworks-scrypt")
        return _HASH_POOL


def _password_bytes(password: str) -> bytes:
    return unicodedata.normalize("NFKC", password).encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class PasswordHasher:
    """scrypt with a random salt; the cost parameters travel inside each hash."""

    # Bounds for parameters read from a (possibly hand-edited) hash, so one cannot stall the gateway.
    MAX_N = 2**17
    MAX_R = 16
    MAX_P = 4

    def __init__(self, n: int = 2**14, r: int = 8, p: int = 1, salt_bytes: int = 16, key_bytes: int = 64) -> None:
        if n < 2 or n & (n - 1):
            raise ValueError("scrypt n must be a power of two")
        self.n, self.r, self.p = n, r, p
        self.salt_bytes, self.key_bytes = salt_bytes, key_bytes
        self._dummy: str | None = None
        self._dummy_guard = threading.Lock()

    @staticmethod
    def _derive(password: bytes, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
        return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=2 * 128 * r * (n + p) + (1 << 20), dklen=length)

    def hash(self, password: str) -> str:
        salt = secrets.token_bytes(self.salt_bytes)
        key = self._derive(_password_bytes(password), salt, self.n, self.r, self.p, self.key_bytes)
        return f"scrypt${self.n}${self.r}${self.p}${_b64(salt)}${_b64(key)}"

    def verify(self, password: str, encoded: str) -> bool:
        """True when `password` matches; False for a wrong password or a malformed hash."""
        parts = encoded.split("$")
        if len(parts) != 6 or parts[0] != "scrypt":
            return False
        try:
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt = base64.b64decode(parts[4], validate=True)
            expected = base64.b64decode(parts[5], validate=True)
        except (ValueError, binascii.Error):
            return False
        if not (2 <= n <= self.MAX_N and n & (n - 1) == 0 and 1 <= r <= self.MAX_R and 1 <= p <= self.MAX_P):
            return False
        if not salt or not 16 <= len(expected) <= 256:
            return False
        actual = self._derive(_password_bytes(password), salt, n, r, p, len(expected))
        return hmac.compare_digest(actual, expected)

    def dummy_hash(self) -> str:
        """A hash of a random password, with this hasher's parameters: unknown users are checked against it."""
        with self._dummy_guard:
            if self._dummy is None:
                self._dummy = self.hash(secrets.token_urlsafe(24))
            return self._dummy

    async def hash_async(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(_hash_pool(), self.hash, password)

    async def verify_async(self, password: str, encoded: str | None) -> bool:
        """`encoded` None (no such user): the same work against the dummy hash, then False."""
        def work() -> bool:
            if encoded is None:
                self.verify(password, self.dummy_hash())
                return False
            self.dummy_hash()  # the first login of any kind pays for making the dummy
            return self.verify(password, encoded)

        return await asyncio.get_running_loop().run_in_executor(_hash_pool(), work)


DEFAULT_HASHER = PasswordHasher()


def hash_password(password: str) -> str:
    """A `password_hash` value for the users file (for scripts and hand-made users)."""
    return DEFAULT_HASHER.hash(password)


def verify_password(password: str, encoded: str) -> bool:
    return DEFAULT_HASHER.verify(password, encoded)
