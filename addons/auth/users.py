"""The auth plugin's own users: a JSON user store, read by the `auth.register`, `auth.login` and
`auth.validate` handlers (addons.auth.handlers); password hashes come from addons.auth.passwords.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import tempfile
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:  # POSIX; elsewhere only the in-process locks serialize writers
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


FILE_VERSION = 1
# Usernames: 1-64 ASCII letters, digits and `._-@`, at least one letter or digit (so never `.`,
# `..` or another name of punctuation only). ASCII only: no look-alike letters from other scripts,
# no case folding beyond `lower`, nothing a terminal, a log or a path would read otherwise.
USERNAME_PATTERN = re.compile(r"[A-Za-z0-9._@-]{1,64}")  # fullmatch, never match: `$` admits a final "\n"
USERNAME_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._@-")
MAX_USERNAME_LENGTH = 64
USERNAME_RULE = "1 to 64 characters: ASCII letters, digits, '.', '_', '-' or '@', with at least one letter or digit"
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


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
        what = "a control character" if CONTROL_CHARACTERS.match(bad) else "a space" if bad.isspace() else "a path separator" if bad in "/\\" else "the character"
        return f"username must be {USERNAME_RULE}; it contains {what} ({ascii(bad)})"
    if not any(c.isalnum() for c in username):
        return f"username must be {USERNAME_RULE}; {username!r} has no letter or digit"
    return None


def valid_username(username: Any) -> bool:
    return username_problem(username) is None and USERNAME_PATTERN.fullmatch(username) is not None


def username_key(username: str) -> str:
    """Usernames are unique regardless of case (they are ASCII, so `lower` is enough)."""
    return username.lower()

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
