"""The auth plugin's own users: a JSON user store and the `auth.register`, `auth.login` and
`auth.validate` handlers.

The users file
--------------
`plugins.auth.config.users_file` names a UTF-8 JSON file::

    {
      "version": 1,
      "users": {
        "alice": {
          "username": "alice",
          "password_hash": "scrypt$16384$8$1$<salt, base64>$<key, base64>",
          "email": "alice@example.com",
          "full_name": "Alice Liddell",
          "roles": ["user"],
          "created_at": "2024-05-01T12:00:00.000Z"
        }
      }
    }

* `users` maps each username to its record. Inside a record, `username` may be left out; when
  it is there it must equal the key. `password_hash` and `roles` are required; `email`,
  `full_name` and `created_at` may be missing or null. Fields this module does not know are
  kept as they are when the file is rewritten.
* A file that does not exist (or holds only whitespace) is an empty store; the first
  registration creates it (and its folder), readable by its owner only. A file that is not
  shaped like the above is an error that names the file, and it is never overwritten.
* The file may be edited by hand while the gateway runs: changes are picked up at the next
  request (the file is read again when its size, mtime or inode change). Editing a user's
  `roles` is how an administrator is made: the token issued at the next login carries them.
  `hash_password()` makes a `password_hash` value.

Usernames are 1 to 64 characters of ASCII letters, digits and `.`, `_`, `-`, `@`. They keep the
case they were registered with (that is the token's subject), but they are unique regardless of
case, and login finds `Alice` when `alice` is typed.

Writes
------
A registration re-reads the file, adds the user and writes the whole file to a temporary file in
the same folder, fsyncs it and renames it over the old one (`os.replace`), so a reader sees the
old file or the new one, never half of one, and a crash leaves the old file in place. Writers
are serialized by an asyncio lock (per store and event loop), a thread lock (per file, inside
the process) and an advisory `fcntl.flock` on `<users_file>.lock` next to the file (between
processes; on platforms without `fcntl` only the first two apply). Because each write starts
from what is on disk, a user added by another process, or by hand, is not lost.

Passwords
---------
Only salted scrypt hashes are stored (`hashlib.scrypt`, n=2**14, r=8, p=1, a 16-byte random
salt, a 64-byte key), encoded `scrypt$n$r$p$salt$key` with standard base64. Passwords are
NFKC-normalized, must be 8 to 1024 characters at registration, and are compared with
`hmac.compare_digest`. Hashing runs on a small dedicated thread pool (bounded CPU and memory:
each hash needs 16 MiB), never on the event loop. A login for an unknown user spends the same
hashing work on a dummy hash, so the answer's timing does not tell which usernames exist.
Neither passwords, hashes nor tokens are ever logged.

Tokens
------
This module issues and checks no token itself. The handlers get an `issue(username, roles,
extra_claims) -> token` callable and a `verify(token) -> claims` callable (which raises on a bad
token); `build_user_handler` binds them to the auth plugin's `issue_token` and `verify_token`.
The extra claims are `email` and `name` (the full name) when the user has them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import inspect
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import unicodedata
import weakref
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from mitmproxy import http

from backworks_core.bodies import loads_json
from backworks_core.context import Identity, RequestContext, json_response
from backworks_core.limits import request_body

try:  # POSIX; elsewhere only the in-process locks serialize writers
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from backworks_core.context import Handler
    from backworks_core.loader import EndpointSpec

logger = logging.getLogger(__name__)

FILE_VERSION = 1
# Usernames: 1-64 ASCII letters, digits and `._-@`, at least one letter or digit (so never `.`,
# `..` or another name of punctuation only). ASCII only: no look-alike letters from other scripts,
# no case folding beyond `lower`, nothing a terminal, a log or a path would read otherwise.
USERNAME_PATTERN = re.compile(r"[A-Za-z0-9._@-]{1,64}")  # fullmatch, never match: `$` admits a final "\n"
USERNAME_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._@-")
MAX_USERNAME_LENGTH = 64
USERNAME_RULE = "1 to 64 characters: ASCII letters, digits, '.', '_', '-' or '@', with at least one letter or digit"
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
MAX_EMAIL_LENGTH = 254
MAX_FULL_NAME_LENGTH = 200
MAX_BODY_BYTES = 64 * 1024
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# The original's messages.
REGISTERED = "User registered successfully"
LOGGED_IN = "Login successful"
TOKEN_VALID = "Token is valid"
INVALID_CREDENTIALS = "Invalid username or password"
CREDENTIALS_REQUIRED = "Username and password are required"
USERNAME_TAKEN = "Username already exists"
NOT_AUTHENTICATED = "Not authenticated"
INVALID_TOKEN = "Invalid or expired token"
STORE_UNAVAILABLE = "the user store is unavailable; see the gateway log"
INVALID_TOKEN_CHALLENGE = 'Bearer error="invalid_token"'

Issuer = Callable[[str, list[str], dict[str, Any]], Union[str, Awaitable[str]]]
Verifier = Callable[[str], Union[dict[str, Any], Identity, Awaitable[Union[dict[str, Any], Identity]]]]
TokenReader = Callable[[RequestContext], Union[str, None]]


class UserStoreError(Exception):
    """The users file cannot be read or written; the message names the file."""


class UsernameTaken(Exception):
    """A user with this name (in any case) already exists."""


# --------------------------------------------------------------------------------------
# Users


@dataclass(frozen=True)
class User:
    username: str
    password_hash: str
    roles: tuple[str, ...] = ()
    email: str | None = None
    full_name: str | None = None
    created_at: str | None = None

    def public(self) -> dict[str, Any]:
        """What clients see: everything but the hash."""
        return {
            "username": self.username,
            "email": self.email,
            "full_name": self.full_name,
            "roles": list(self.roles),
            "created_at": self.created_at,
        }

    def record(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "password_hash": self.password_hash,
            "email": self.email,
            "full_name": self.full_name,
            "roles": list(self.roles),
            "created_at": self.created_at,
        }

    def __repr__(self) -> str:  # never show the hash, even in a traceback or a debugger
        return f"User(username={self.username!r}, roles={list(self.roles)!r})"


def username_problem(username: Any) -> str | None:
    """Why `username` cannot be a username (a message for the client), or None when it can."""
    if not isinstance(username, str):
        return "username must be a string"
    if not 1 <= len(username) <= MAX_USERNAME_LENGTH:
        return f"username must be {USERNAME_RULE}; it has {len(username)}"
    bad = next((c for c in username if c not in USERNAME_CHARACTERS), None)
    if bad is not None:
        what = "a control character" if _CONTROL.match(bad) else "a space" if bad.isspace() else "a path separator" if bad in "/\\" else "the character"
        return f"username must be {USERNAME_RULE}; it contains {what} ({ascii(bad)})"
    if not any(c.isalnum() for c in username):
        return f"username must be {USERNAME_RULE}; {username!r} has no letter or digit"
    return None


def valid_username(username: Any) -> bool:
    return username_problem(username) is None and USERNAME_PATTERN.fullmatch(username) is not None


def username_key(username: str) -> str:
    """Usernames are unique regardless of case (they are ASCII, so `lower` is enough)."""
    return username.lower()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _user_from_record(path: Path, name: Any, data: Any) -> User:
    where = f"users file {path}: user {name!r}"
    if not valid_username(name):
        raise UserStoreError(f"{where}: not a valid username ({USERNAME_RULE})")
    if not isinstance(data, dict):
        raise UserStoreError(f"{where}: expected an object, found {type(data).__name__}")
    if data.get("username", name) != name:
        raise UserStoreError(f"{where}: its `username` ({data.get('username')!r}) differs from its key")
    password_hash = data.get("password_hash")
    if not isinstance(password_hash, str) or not password_hash:
        raise UserStoreError(f"{where}: `password_hash` must be a non-empty string")
    roles = data.get("roles")
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        raise UserStoreError(f"{where}: `roles` must be a list of strings")
    for field in ("email", "full_name", "created_at"):
        if data.get(field) is not None and not isinstance(data[field], str):
            raise UserStoreError(f"{where}: `{field}` must be a string or null")
    return User(
        username=name,
        password_hash=password_hash,
        roles=tuple(roles),
        email=data.get("email"),
        full_name=data.get("full_name"),
        created_at=data.get("created_at"),
    )


@dataclass(frozen=True)
class _Snapshot:
    stamp: tuple[int, int, int] | None  # (inode, size, mtime_ns) of what was read; None: no file
    users: dict[str, User]  # by username_key


_EMPTY = _Snapshot(None, {})

# One thread lock per users file in this process (several UserStore objects may share a file).
_FILE_LOCKS: dict[Path, threading.Lock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


def _thread_lock(path: Path) -> threading.Lock:
    with _FILE_LOCKS_GUARD:
        return _FILE_LOCKS.setdefault(path, threading.Lock())


class UserStore:
    """Users in a JSON file (see the module docstring); safe for concurrent writers."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).absolute()
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._snapshot = _EMPTY
        self._loop_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()
        self.load()

    def __repr__(self) -> str:
        return f"<UserStore {self.path}>"

    # -- reading ---------------------------------------------------------------------

    def load(self) -> None:
        """Read the file if it changed since it was last read; raises UserStoreError."""
        self._snapshot = self._read(self._snapshot)

    def _read(self, known: _Snapshot) -> _Snapshot:
        try:
            file = open(self.path, "rb")
        except FileNotFoundError:
            return _EMPTY
        except OSError as exc:
            raise UserStoreError(f"users file {self.path}: cannot be read: {exc.strerror or exc}") from exc
        with file:
            info = os.fstat(file.fileno())
            stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
            if stamp == known.stamp:
                return known
            raw = file.read()
        return _Snapshot(stamp, self._parse(raw)[1])

    def _parse(self, raw: bytes) -> tuple[dict[str, Any], dict[str, User]]:
        """The document (kept whole, for rewriting) and its users by key."""
        if not raw.strip():
            return {"version": FILE_VERSION, "users": {}}, {}
        try:
            document = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise UserStoreError(f"users file {self.path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        except json.JSONDecodeError as exc:
            raise UserStoreError(f"users file {self.path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
        if not isinstance(document, dict) or not isinstance(document.get("users"), dict):
            raise UserStoreError(f'users file {self.path}: expected an object {{"version": 1, "users": {{...}}}}')
        if document.get("version", FILE_VERSION) != FILE_VERSION:
            raise UserStoreError(f"users file {self.path}: version {document.get('version')!r} is not supported (expected {FILE_VERSION})")
        users: dict[str, User] = {}
        for name, data in document["users"].items():
            user = _user_from_record(self.path, name, data)
            key = username_key(name)
            if key in users:
                raise UserStoreError(f"users file {self.path}: users {users[key].username!r} and {name!r} differ only in case")
            users[key] = user
        return document, users

    async def get(self, username: str) -> User | None:
        """The user by name (any case), as the file holds it now."""
        await self.refresh()
        return self._snapshot.users.get(username_key(username))

    async def all(self) -> list[User]:
        await self.refresh()
        return list(self._snapshot.users.values())

    async def refresh(self) -> None:
        """Pick up changes made outside (another process, a hand edit); off the event loop."""
        self._snapshot = await asyncio.to_thread(self._read, self._snapshot)

    # -- writing ---------------------------------------------------------------------

    def _loop_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._loop_locks.get(loop)
        if lock is None:
            lock = self._loop_locks[loop] = asyncio.Lock()
        return lock

    async def add(self, user: User) -> User:
        """Store a new user; raises UsernameTaken if the name exists in any case."""
        if not valid_username(user.username):
            raise ValueError(f"invalid username {user.username!r}: {username_problem(user.username) or USERNAME_RULE}")
        async with self._loop_lock():
            self._snapshot = await asyncio.to_thread(self._add_locked, user)
        return user

    def _add_locked(self, user: User) -> _Snapshot:
        with _thread_lock(self.path), self._file_lock():
            try:
                raw = self.path.read_bytes()
                mode: int | None = self.path.stat().st_mode & 0o777
            except FileNotFoundError:
                raw, mode = b"", None
            except OSError as exc:
                raise UserStoreError(f"users file {self.path}: cannot be read: {exc.strerror or exc}") from exc
            document, users = self._parse(raw)
            key = username_key(user.username)
            if key in users:
                raise UsernameTaken(user.username)
            document.setdefault("version", FILE_VERSION)
            document["users"][user.username] = user.record()
            users[key] = user
            stamp = self._write(document, mode)
            return _Snapshot(stamp, users)

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        if fcntl is None:  # pragma: no cover - Windows
            yield
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # closing releases the lock

    def _write(self, document: dict[str, Any], mode: int | None) -> tuple[int, int, int]:
        """Atomically replace the file with `document`; returns the new file's stamp."""
        payload = (json.dumps(document, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        descriptor, temp_name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(descriptor, "wb") as temp:
                temp.write(payload)
                temp.flush()
                if mode is not None:
                    os.fchmod(temp.fileno(), mode)  # mkstemp makes it 0600: keep the old file's mode
                os.fsync(temp.fileno())
                info = os.fstat(temp.fileno())
            os.replace(temp_name, self.path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
            if isinstance(exc, OSError):
                raise UserStoreError(f"users file {self.path}: cannot be written: {exc.strerror or exc}") from exc
            raise
        _fsync_folder(folder)
        return (info.st_ino, info.st_size, info.st_mtime_ns)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); best effort elsewhere."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


# One store per users file, shared by the handlers of every blueprint that names it.
_STORES: dict[Path, UserStore] = {}
_STORES_GUARD = threading.Lock()


def shared_store(path: Path | str) -> UserStore:
    """The process's UserStore for this file, (re)read now: raises UserStoreError if it is corrupt."""
    resolved = Path(path).resolve()
    with _STORES_GUARD:
        store = _STORES.get(resolved)
        if store is None:
            store = _STORES[resolved] = UserStore(resolved)
            return store
    store.load()
    return store


# --------------------------------------------------------------------------------------
# Passwords

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


# --------------------------------------------------------------------------------------
# Handlers


class BadRequest(Exception):
    pass


def _shown(username: Any) -> str:
    """A username for the log: quoted (no line injection) and bounded."""
    if username is None:
        return "<none>"
    if not isinstance(username, str):
        return f"<{type(username).__name__}>"
    return repr(username[:64] + ("..." if len(username) > 64 else ""))


def _json_object(ctx: RequestContext) -> dict[str, Any]:
    if ctx.body_stream is not None:
        raise BadRequest("request body is too large")
    # Bounded: past MAX_BODY_BYTES (or the endpoint's lower limit) once decoded → BodyError, which
    # the gateway answers 413 (415/400 for an unknown or broken Content-Encoding, too deep JSON).
    raw = request_body(ctx, MAX_BODY_BYTES)
    try:
        body = loads_json(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _credentials(body: dict[str, Any]) -> tuple[str, str]:
    username, password = body.get("username"), body.get("password")
    if username is None or password is None or username == "" or password == "":
        raise BadRequest(CREDENTIALS_REQUIRED)
    if not isinstance(username, str) or not isinstance(password, str):
        raise BadRequest("username and password must be strings")
    return username, password


def _optional_text(body: dict[str, Any], field: str, limit: int) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string")
    value = value.strip()
    if len(value) > limit:
        raise BadRequest(f"{field} must be at most {limit} characters")
    if _CONTROL.search(value):
        raise BadRequest(f"{field} must not contain control characters")
    return value or None


def _extra_claims(user: User) -> dict[str, Any]:
    claims: dict[str, Any] = {}
    if user.email:
        claims["email"] = user.email
    if user.full_name:
        claims["name"] = user.full_name
    return claims


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class RegisterHandler:
    """`POST {username, password, email?, full_name?}` → `201 {message, user, token}`."""

    def __init__(self, store: UserStore, issue: Issuer, default_roles: list[str], hasher: PasswordHasher = DEFAULT_HASHER) -> None:
        self.store = store
        self.issue = issue
        self.default_roles = tuple(default_roles)
        self.hasher = hasher

    def _parse(self, body: dict[str, Any]) -> tuple[str, str, str | None, str | None]:
        username, password = _credentials(body)
        problem = username_problem(username)
        if problem is not None or not valid_username(username):
            raise BadRequest(problem or f"username must be {USERNAME_RULE}")
        if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
            raise BadRequest(f"password must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters")
        email = _optional_text(body, "email", MAX_EMAIL_LENGTH)
        if email is not None and not _EMAIL.match(email):
            raise BadRequest("email is not a valid address")
        full_name = _optional_text(body, "full_name", MAX_FULL_NAME_LENGTH)
        return username, password, email, full_name

    async def __call__(self, ctx: RequestContext) -> http.Response:
        body: dict[str, Any] = {}
        try:
            body = _json_object(ctx)
            username, password, email, full_name = self._parse(body)
        except BadRequest as exc:
            logger.warning("[%s] auth.register refused for %s: %s", ctx.request_id, _shown(body.get("username")), exc)
            return ctx.error(400, str(exc))
        try:
            if await self.store.get(username) is not None:  # a cheap early answer; add() decides
                raise UsernameTaken(username)
            password_hash = await self.hasher.hash_async(password)
            user = User(username, password_hash, self.default_roles, email, full_name, _now())
            # The token first: if issuing fails, no user is left behind without one.
            token = await _maybe_await(self.issue(user.username, list(user.roles), _extra_claims(user)))
            await self.store.add(user)
        except UsernameTaken:
            logger.warning("[%s] auth.register refused for %s: the username is taken", ctx.request_id, _shown(username))
            return ctx.error(409, USERNAME_TAKEN)
        except UserStoreError as exc:
            logger.error("[%s] auth.register failed for %s: %s", ctx.request_id, _shown(username), exc)
            return ctx.error(503, STORE_UNAVAILABLE)
        logger.info("[%s] auth.register: user %s registered with roles %s", ctx.request_id, _shown(username), list(user.roles))
        return json_response(201, {"message": REGISTERED, "user": user.public(), "token": token})


class LoginHandler:
    """`POST {username, password}` → `200 {message, user, token}`, or one generic 401."""

    def __init__(self, store: UserStore, issue: Issuer, hasher: PasswordHasher = DEFAULT_HASHER) -> None:
        self.store = store
        self.issue = issue
        self.hasher = hasher

    async def __call__(self, ctx: RequestContext) -> http.Response:
        try:
            username, password = _credentials(_json_object(ctx))
        except BadRequest as exc:
            logger.warning("[%s] auth.login refused: %s", ctx.request_id, exc)
            return ctx.error(400, str(exc))
        user: User | None = None
        try:
            if valid_username(username) and len(password) <= MAX_PASSWORD_LENGTH:
                user = await self.store.get(username)
                ok = await self.hasher.verify_async(password, user.password_hash if user else None)
            else:
                ok = False  # cannot be anyone's: no hashing needed, and nothing learned about users
        except UserStoreError as exc:
            logger.error("[%s] auth.login failed for %s: %s", ctx.request_id, _shown(username), exc)
            return ctx.error(503, STORE_UNAVAILABLE)
        if not ok or user is None:
            logger.warning("[%s] auth.login failed for %s", ctx.request_id, _shown(username))
            return ctx.error(401, INVALID_CREDENTIALS)
        token = await _maybe_await(self.issue(user.username, list(user.roles), _extra_claims(user)))
        logger.info("[%s] auth.login: user %s logged in", ctx.request_id, _shown(user.username))
        return json_response(200, {"message": LOGGED_IN, "user": user.public(), "token": token})


def token_reader(sources: list[str] | None = None) -> TokenReader:
    """Where `auth.validate` looks for a token when no middleware authenticated the request:
    `header` (`Authorization: Bearer ...`), `cookie:NAME`, `query:NAME`; the first found wins.

    The auth middleware's own reader does the reading, so both refuse the same things (two
    Authorization headers, a repeated cookie, `Bearer` without a token): it raises then.
    """
    from addons.auth import extract_token  # imported here: addons.auth imports this module lazily too

    chosen = list(sources or ["header"])
    for source in chosen:
        kind, _, name = source.partition(":")
        if not (source == "header" or (kind in ("cookie", "query") and name)):
            raise ValueError(f"unknown token source {source!r} (header, cookie:NAME or query:NAME)")

    def read(ctx: RequestContext) -> str | None:
        found = extract_token(ctx.request, chosen)
        return found.token if found is not None else None

    return read


class ValidateHandler:
    """`GET` with a token → `200 {message, user}`, or 401.

    The identity an auth middleware already established (`ctx.user`) is used as it is;
    without one the token is read from the request and checked with `verify`.
    """

    def __init__(
        self,
        verify: Verifier,
        store: UserStore | None = None,
        token_from: TokenReader | None = None,
        roles_claim: str = "roles",
        permissions_claim: str = "permissions",
    ) -> None:
        self.verify = verify
        self.store = store
        self.token_from = token_from or token_reader()
        self.roles_claim = roles_claim
        self.permissions_claim = permissions_claim

    def _identity(self, verified: dict[str, Any] | Identity) -> Identity:
        if isinstance(verified, Identity):
            return verified
        username = verified.get("sub") or verified.get("username")
        if not isinstance(username, str) or not username:
            raise ValueError("the token names no subject")
        roles = verified.get(self.roles_claim) or []
        permissions = verified.get(self.permissions_claim) or []
        return Identity(
            username=username,
            roles=[str(r) for r in roles] if isinstance(roles, list) else [str(roles)],
            permissions=[str(p) for p in permissions] if isinstance(permissions, list) else [str(permissions)],
            claims=dict(verified),
        )

    async def __call__(self, ctx: RequestContext) -> http.Response:
        identity = ctx.user
        if identity is None:
            try:
                token = self.token_from(ctx)
            except Exception as exc:  # a credential that is there but unusable (TokenRejected)
                logger.warning("[%s] auth.validate: token refused (%s)", ctx.request_id, type(exc).__name__)
                return ctx.error(401, INVALID_TOKEN, {"WWW-Authenticate": INVALID_TOKEN_CHALLENGE})
            if not token:
                logger.warning("[%s] auth.validate: no token", ctx.request_id)
                return ctx.error(401, NOT_AUTHENTICATED, {"WWW-Authenticate": INVALID_TOKEN_CHALLENGE})
            try:
                identity = self._identity(await _maybe_await(self.verify(token)))
            except Exception as exc:  # the verifier's way of saying no, whatever its exception type
                logger.warning("[%s] auth.validate: token refused (%s)", ctx.request_id, type(exc).__name__)
                return ctx.error(401, INVALID_TOKEN, {"WWW-Authenticate": INVALID_TOKEN_CHALLENGE})
        user: dict[str, Any] = {}
        if self.store is not None:
            try:
                stored = await self.store.get(identity.username) if valid_username(identity.username) else None
            except UserStoreError as exc:  # the token is still valid; the profile is only extra
                logger.error("[%s] auth.validate: %s", ctx.request_id, exc)
                stored = None
            if stored is not None:
                user.update(stored.public())
        # What the token grants wins over what the file says now.
        user.update({"username": identity.username, "roles": list(identity.roles), "permissions": list(identity.permissions)})
        return json_response(200, {"message": TOKEN_VALID, "user": user})


# --------------------------------------------------------------------------------------
# The auth plugin's glue

USER_HANDLERS = ("auth.register", "auth.login", "auth.validate")


def build_user_handler(handler: str, endpoint: EndpointSpec, config: Any, plugin: Any) -> Handler:
    """Compile one of the auth plugin's built-in endpoints.

    `config` is the auth plugin's config (`users_file`, already resolved against the blueprint
    folder; `default_roles`; `token_sources`, `roles_claim`, `permissions_claim` if it has
    them); `plugin` offers `issue_token(config, username, roles, extra_claims)` and
    `verify_token(config, token)`. Handlers naming the same users file share one UserStore.
    """
    from backworks_core.gateway import BuildError

    if handler not in USER_HANDLERS:
        raise BuildError(f"unknown auth handler {handler!r} (expected one of: {', '.join(USER_HANDLERS)})", ("handler",))
    users_file = getattr(config, "users_file", None)
    store: UserStore | None = None
    if users_file:
        try:
            store = shared_store(Path(users_file))
        except UserStoreError as exc:
            raise BuildError(str(exc), ("handler",)) from exc
    elif handler != "auth.validate":  # validate can check tokens from any issuer without a store
        raise BuildError(f"{handler} needs plugins.auth.config.users_file", ("handler",))

    if handler == "auth.validate":
        try:
            reader = token_reader(getattr(config, "token_sources", None))
        except ValueError as exc:
            raise BuildError(str(exc), ("handler",)) from exc
        return ValidateHandler(
            verify=lambda token: plugin.verify_token(config, token),
            store=store,
            token_from=reader,
            roles_claim=getattr(config, "roles_claim", None) or "roles",
            permissions_claim=getattr(config, "permissions_claim", None) or "permissions",
        )

    assert store is not None

    def issue(username: str, roles: list[str], extra_claims: dict[str, Any]) -> Any:
        return plugin.issue_token(config, username, roles, extra_claims)

    if handler == "auth.register":
        default_roles = getattr(config, "default_roles", None)
        return RegisterHandler(store, issue, list(default_roles) if default_roles is not None else ["user"])
    return LoginHandler(store, issue)
