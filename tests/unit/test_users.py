"""The auth plugin's users: the JSON store, scrypt hashes, and the register/login/validate handlers."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from addons.auth import users
from addons.auth import (
    LoginHandler,
    PasswordHasher,
    RegisterHandler,
    User,
    UsernameTaken,
    UserStore,
    UserStoreError,
    ValidateHandler,
    build_user_handler,
    hash_password,
    token_reader,
    verify_password,
)
from backworks_core.context import Identity, RequestContext
from backworks_core.plugins import BuildError

from .conftest import body_json, make_flow

REPO = Path(__file__).resolve().parents[2]

# Cheap parameters for tests that hash many passwords; the hash tests use the real defaults.
FAST = PasswordHasher(n=16, r=1, p=1)


class FakeTokenService:
    """A test double of the auth plugin's token service (issue and verify), not of the user store."""

    def __init__(self) -> None:
        self.issued: dict[str, dict[str, Any]] = {}

    def issue(self, username: str, roles: list[str], extra_claims: dict[str, Any]) -> str:
        token = f"fake.{secrets.token_hex(8)}"
        self.issued[token] = {"sub": username, "roles": list(roles), **extra_claims}
        return token

    def verify(self, token: str) -> dict[str, Any]:
        if token not in self.issued:
            raise ValueError("not a token this service issued")
        return dict(self.issued[token])


@pytest.fixture
def tokens() -> FakeTokenService:
    return FakeTokenService()


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    return tmp_path / "data" / "users.json"


@pytest.fixture
def store(users_file: Path) -> UserStore:
    return UserStore(users_file)


def ctx_for(method: str = "POST", path: str = "/auth", body: Any = None, *, raw: bytes | None = None, headers=None, request_id: str = "req-1", user=None) -> RequestContext:
    content = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    flow = make_flow(method, path, body=content, headers=headers or {"Content-Type": "application/json"})
    return RequestContext(flow=flow, endpoint=None, params={}, request_id=request_id, user=user)  # type: ignore[arg-type]


def file_users(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())["users"]


def write_users(path: Path, records: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "users": records}))


def make_user(name: str, roles=("user",)) -> User:
    return User(name, FAST.hash("password-" + name), tuple(roles), created_at="2024-01-01T00:00:00.000Z")


# --------------------------------------------------------------------------------------
# The store


async def test_a_missing_file_is_an_empty_store_created_on_first_write(store: UserStore, users_file: Path) -> None:
    assert not users_file.exists()
    assert await store.all() == []
    assert await store.get("alice") is None
    await store.add(make_user("alice"))
    assert users_file.exists()
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600  # it holds password hashes
    assert users_file.with_name("users.json.lock").exists()


async def test_round_trip_through_the_file(store: UserStore, users_file: Path) -> None:
    alice = User("Alice", FAST.hash("secret-pass"), ("user", "admin"), "a@example.com", "Alice L", "2024-01-01T00:00:00.000Z")
    await store.add(alice)
    document = json.loads(users_file.read_text())
    assert document == {"version": 1, "users": {"Alice": alice.record()}}
    again = UserStore(users_file)
    assert await again.get("Alice") == alice
    assert await again.get("aLiCe") == alice  # lookups ignore case
    assert alice.public() == {
        "username": "Alice",
        "email": "a@example.com",
        "full_name": "Alice L",
        "roles": ["user", "admin"],
        "created_at": "2024-01-01T00:00:00.000Z",
    }
    assert "hash" not in repr(alice) and alice.password_hash not in repr(alice)


async def test_usernames_are_unique_regardless_of_case(store: UserStore) -> None:
    await store.add(make_user("Alice"))
    with pytest.raises(UsernameTaken):
        await store.add(make_user("alice"))
    assert [u.username for u in await store.all()] == ["Alice"]


async def test_an_outside_edit_is_seen_and_not_lost_by_the_next_write(store: UserStore, users_file: Path) -> None:
    await store.add(make_user("alice"))
    document = json.loads(users_file.read_text())
    document["users"]["bob"] = {"password_hash": hash_password("bob-password"), "roles": ["admin"], "note": "made by hand"}
    document["users"]["alice"]["roles"] = ["user", "editor"]
    users_file.write_text(json.dumps(document))
    bob = await store.get("bob")
    assert bob is not None and bob.roles == ("admin",) and bob.email is None
    assert (await store.get("alice")).roles == ("user", "editor")
    await store.add(make_user("carol"))
    records = file_users(users_file)
    assert set(records) == {"alice", "bob", "carol"}
    assert records["bob"]["note"] == "made by hand"  # unknown fields are kept
    assert records["alice"]["roles"] == ["user", "editor"]


async def test_an_empty_file_is_an_empty_store(users_file: Path) -> None:
    users_file.parent.mkdir(parents=True)
    users_file.write_text("  \n")
    store = UserStore(users_file)
    assert await store.all() == []
    await store.add(make_user("alice"))
    assert set(file_users(users_file)) == {"alice"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "expected an object"),
        ('{"users": []}', "expected an object"),
        ('{"version": 2, "users": {}}', "version 2"),
        ('{"users": {"alice": {"roles": []}}}', "password_hash"),
        ('{"users": {"alice": {"password_hash": "x", "roles": "admin"}}}', "roles"),
        ('{"users": {"alice": {"username": "bob", "password_hash": "x", "roles": []}}}', "differs from its key"),
        ('{"users": {"al ice": {"password_hash": "x", "roles": []}}}', "not a valid username"),
        ('{"users": {"alice": {"password_hash": "x", "roles": [], "email": 5}}}', "email"),
        ('{"users": {"alice": {"password_hash": "x", "roles": []}, "ALICE": {"password_hash": "y", "roles": []}}}', "differ only in case"),
    ],
)
def test_a_corrupt_file_is_an_error_naming_the_file(users_file: Path, content: str, message: str) -> None:
    users_file.parent.mkdir(parents=True)
    users_file.write_text(content)
    with pytest.raises(UserStoreError) as info:
        UserStore(users_file)
    assert str(users_file) in str(info.value)
    assert message in str(info.value)


def test_a_file_that_is_not_utf8_is_an_error(users_file: Path) -> None:
    users_file.parent.mkdir(parents=True)
    users_file.write_bytes(b'{"users": {"\xff": 1}}')
    with pytest.raises(UserStoreError, match="not UTF-8"):
        UserStore(users_file)


async def test_a_file_corrupted_later_is_never_overwritten(store: UserStore, users_file: Path) -> None:
    await store.add(make_user("alice"))
    users_file.write_text('{"users": {"alice": ')  # a half-finished hand edit
    with pytest.raises(UserStoreError, match=str(users_file)):
        await store.add(make_user("bob"))
    with pytest.raises(UserStoreError):
        await store.get("alice")
    assert users_file.read_text() == '{"users": {"alice": '


async def test_a_crash_before_the_rename_leaves_the_old_file_intact(store: UserStore, users_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    await store.add(make_user("alice"))
    before = users_file.read_bytes()

    def crash(src: str, dst: Any) -> None:
        assert Path(src).read_bytes() != before  # the new content was written and flushed
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(users.os, "replace", crash)
    with pytest.raises(UserStoreError, match="cannot be written"):
        await store.add(make_user("bob"))
    monkeypatch.undo()
    assert users_file.read_bytes() == before
    assert sorted(p.name for p in users_file.parent.iterdir()) == ["users.json", "users.json.lock"]  # no temp file left
    # A hard crash leaves its temp file behind; it is not the store and does not disturb it.
    (users_file.parent / ".users.json.abc123.tmp").write_text('{"users": {"half": ')
    fresh = UserStore(users_file)
    assert [u.username for u in await fresh.all()] == ["alice"]
    await fresh.add(make_user("bob"))
    assert set(file_users(users_file)) == {"alice", "bob"}


async def test_writing_keeps_the_mode_of_an_existing_file(store: UserStore, users_file: Path) -> None:
    write_users(users_file, {})
    users_file.chmod(0o640)
    await store.add(make_user("alice"))
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o640


async def test_fifty_concurrent_registrations_are_all_kept(store: UserStore, users_file: Path, tokens: FakeTokenService) -> None:
    register = RegisterHandler(store, tokens.issue, ["user"], hasher=FAST)
    responses = await asyncio.gather(
        *(register(ctx_for(body={"username": f"user{i}", "password": f"password-{i}"})) for i in range(50))
    )
    assert [r.status_code for r in responses] == [201] * 50
    records = file_users(users_file)  # valid JSON, or this raises
    assert set(records) == {f"user{i}" for i in range(50)}
    assert len(await UserStore(users_file).all()) == 50


async def test_concurrent_registrations_of_one_name_give_one_201(store: UserStore, users_file: Path, tokens: FakeTokenService) -> None:
    register = RegisterHandler(store, tokens.issue, ["user"], hasher=FAST)
    names = ["dave", "Dave", "DAVE", "dave"] * 5
    responses = await asyncio.gather(*(register(ctx_for(body={"username": n, "password": "password-x"})) for n in names))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 19
    assert len(file_users(users_file)) == 1


def test_two_threads_with_their_own_stores_lose_no_user(users_file: Path) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def worker(prefix: str) -> None:
        try:
            own = UserStore(users_file)
            start.wait()

            async def run() -> None:
                await asyncio.gather(*(own.add(make_user(f"{prefix}{i}")) for i in range(25)))

            asyncio.run(run())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(p,)) for p in ("left", "right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert set(file_users(users_file)) == {f"{p}{i}" for p in ("left", "right") for i in range(25)}


PROCESS_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys, time
    from addons.auth import User, UserStore

    path, prefix, count, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    store = UserStore(path)
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.001)

    async def main():
        for i in range(count):
            await store.add(User(f"{prefix}{i}", "scrypt$16$1$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAA==", ("user",)))

    asyncio.run(main())
    """
)


def test_two_processes_writing_one_file_lose_no_user(users_file: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", PROCESS_SCRIPT, str(users_file), prefix, "40", str(go)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for prefix in ("p", "q")
    ]
    try:
        for process in processes:
            assert process.stdout.readline().strip() == "ready", process.stderr.read()
        go.touch()
        for process in processes:
            assert process.wait(60) == 0, process.stderr.read()
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.stdout.close()
            process.stderr.close()
    assert set(file_users(users_file)) == {f"{p}{i}" for p in ("p", "q") for i in range(40)}


# --------------------------------------------------------------------------------------
# Password hashes


def test_hashes_are_salted_scrypt_with_the_documented_parameters() -> None:
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first != second
    for encoded in (first, second):
        scheme, n, r, p, salt, key = encoded.split("$")
        assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
        assert len(base64.b64decode(salt)) == 16
        assert len(base64.b64decode(key)) == 64
    assert verify_password("correct horse", first)
    assert verify_password("correct horse", second)
    assert not verify_password("correct horsf", first)
    assert not verify_password("", first)


def test_verification_reads_the_parameters_from_the_hash() -> None:
    assert verify_password("pass-word", FAST.hash("pass-word"))
    assert FAST.verify("pass-word", hash_password("pass-word"))


def test_unicode_passwords_are_normalized() -> None:
    encoded = FAST.hash("caf\u00e9-password")  # é as one code point
    assert FAST.verify("cafe\u0301-password", encoded)  # e + combining accent


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plain-text-password",
        "bcrypt$2b$12$abc",
        "scrypt$16$1$1$not base64!$AAAAAAAAAAAAAAAAAAAAAA==",
        "scrypt$15$1$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAA==",  # n not a power of two
        "scrypt$1073741824$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAA==",  # would stall the gateway
        "scrypt$16$1$1$$AAAAAAAAAAAAAAAAAAAAAA==",  # no salt
    ],
)
def test_a_malformed_hash_never_verifies(encoded: str) -> None:
    assert not FAST.verify("anything-at-all", encoded)


async def test_hashing_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    derive = PasswordHasher._derive

    def spy(*args: Any) -> bytes:
        threads.append(threading.current_thread().name)
        return derive(*args)

    monkeypatch.setattr(PasswordHasher, "_derive", staticmethod(spy))
    hasher = PasswordHasher(n=16, r=1, p=1)
    encoded = await hasher.hash_async("password-1")
    assert await hasher.verify_async("password-1", encoded)
    assert threads and all(name.startswith("backworks-scrypt") for name in threads)


# --------------------------------------------------------------------------------------
# auth.register


async def test_register_answers_201_with_the_user_and_a_token(store: UserStore, users_file: Path, tokens: FakeTokenService) -> None:
    register = RegisterHandler(store, tokens.issue, ["user", "reader"], hasher=FAST)
    response = await register(
        ctx_for(body={"username": "Alice", "password": "s3cret-pass", "email": "alice@example.com", "full_name": "Alice L", "roles": ["admin"]})
    )
    assert response.status_code == 201
    body = body_json(response)
    assert body["message"] == "User registered successfully"
    assert set(body) == {"message", "user", "token"}
    user = body["user"]
    assert {k: user[k] for k in ("username", "email", "full_name", "roles")} == {
        "username": "Alice",
        "email": "alice@example.com",
        "full_name": "Alice L",
        "roles": ["user", "reader"],  # the body's own `roles` is ignored
    }
    assert user["created_at"].endswith("Z")
    assert "password_hash" not in user and "s3cret-pass" not in response.get_text()
    assert tokens.verify(body["token"]) == {"sub": "Alice", "roles": ["user", "reader"], "email": "alice@example.com", "name": "Alice L"}
    stored = file_users(users_file)["Alice"]
    assert stored["password_hash"].startswith("scrypt$") and "s3cret-pass" not in users_file.read_text()
    assert FAST.verify("s3cret-pass", stored["password_hash"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "must be a JSON object"),
        (b"", "must be a JSON object"),
        (b"\xff\xfe", "must be a JSON object"),
        (b'["alice", "password-1"]', "must be a JSON object"),
        ({"password": "password-1"}, "Username and password are required"),
        ({"username": "alice"}, "Username and password are required"),
        ({"username": "", "password": "password-1"}, "Username and password are required"),
        ({"username": 42, "password": "password-1"}, "must be strings"),
        ({"username": "alice", "password": ["password-1"]}, "must be strings"),
        ({"username": "al ice", "password": "password-1"}, "username must be 1 to 64"),
        ({"username": "a" * 65, "password": "password-1"}, "username must be 1 to 64"),
        ({"username": "alice", "password": "short"}, "password must be 8 to 1024"),
        ({"username": "alice", "password": "x" * 1025}, "password must be 8 to 1024"),
        ({"username": "alice", "password": "password-1", "email": "nope"}, "email is not a valid address"),
        ({"username": "alice", "password": "password-1", "email": 5}, "email must be a string"),
        ({"username": "alice", "password": "password-1", "full_name": "x" * 201}, "full_name must be at most 200"),
        ({"username": "alice", "password": "password-1", "full_name": "Al\nice"}, "control characters"),
    ],
)
async def test_register_refuses_bad_input_with_400(store: UserStore, users_file: Path, tokens: FakeTokenService, body: Any, message: str) -> None:
    register = RegisterHandler(store, tokens.issue, ["user"], hasher=FAST)
    ctx = ctx_for(raw=body) if isinstance(body, bytes) else ctx_for(body=body)
    response = await register(ctx)
    assert response.status_code == 400
    error = body_json(response)
    assert message in error["error"]
    assert error["status"] == 400 and error["request_id"] == "req-1"
    assert not users_file.exists()
    assert tokens.issued == {}


async def test_register_answers_409_for_a_taken_name(store: UserStore, users_file: Path, tokens: FakeTokenService) -> None:
    register = RegisterHandler(store, tokens.issue, ["user"], hasher=FAST)
    assert (await register(ctx_for(body={"username": "alice", "password": "password-1"}))).status_code == 201
    before = users_file.read_bytes()
    response = await register(ctx_for(body={"username": "ALICE", "password": "password-2"}))
    assert response.status_code == 409
    assert body_json(response)["error"] == "Username already exists"
    assert users_file.read_bytes() == before


async def test_register_stores_nothing_when_the_token_cannot_be_issued(store: UserStore, users_file: Path) -> None:
    def broken_issuer(username: str, roles: list[str], extra: dict[str, Any]) -> str:
        raise RuntimeError("no signing key")

    register = RegisterHandler(store, broken_issuer, ["user"], hasher=FAST)
    with pytest.raises(RuntimeError):  # the gateway turns it into a 500 with a request id
        await register(ctx_for(body={"username": "alice", "password": "password-1"}))
    assert not users_file.exists()


async def test_register_answers_503_and_keeps_a_corrupt_file(store: UserStore, users_file: Path, tokens: FakeTokenService) -> None:
    write_users(users_file, {})
    users_file.write_text("{oops")
    register = RegisterHandler(store, tokens.issue, ["user"], hasher=FAST)
    response = await register(ctx_for(body={"username": "alice", "password": "password-1"}))
    assert response.status_code == 503
    assert users_file.read_text() == "{oops"


# --------------------------------------------------------------------------------------
# auth.login


@pytest.fixture
async def alice(store: UserStore) -> User:
    user = User("Alice", FAST.hash("right-password"), ("user", "admin"), "alice@example.com", None, "2024-01-01T00:00:00.000Z")
    return await store.add(user)


async def test_login_answers_200_with_the_user_and_a_token(store: UserStore, alice: User, tokens: FakeTokenService) -> None:
    login = LoginHandler(store, tokens.issue, hasher=FAST)
    for typed in ("Alice", "alice"):
        response = await login(ctx_for(body={"username": typed, "password": "right-password"}))
        assert response.status_code == 200
        body = body_json(response)
        assert body["message"] == "Login successful"
        assert body["user"] == alice.public()
        assert tokens.verify(body["token"]) == {"sub": "Alice", "roles": ["user", "admin"], "email": "alice@example.com"}


async def test_login_sees_a_user_added_by_hand(store: UserStore, users_file: Path, tokens: FakeTokenService) -> None:
    write_users(users_file, {"root": {"password_hash": hash_password("hand-made-pass"), "roles": ["admin"]}})
    response = await LoginHandler(store, tokens.issue)(ctx_for(body={"username": "root", "password": "hand-made-pass"}))
    assert response.status_code == 200
    assert tokens.verify(body_json(response)["token"])["roles"] == ["admin"]


async def test_login_401_is_the_same_for_unknown_users_and_wrong_passwords(store: UserStore, alice: User, tokens: FakeTokenService) -> None:
    login = LoginHandler(store, tokens.issue, hasher=FAST)
    attempts = [
        {"username": "Alice", "password": "wrong-password"},
        {"username": "nobody", "password": "wrong-password"},
        {"username": "nobody", "password": "right-password"},
        {"username": "not a valid name!", "password": "right-password"},
        {"username": "Alice", "password": "x" * 5000},
    ]
    responses = [await login(ctx_for(body=attempt)) for attempt in attempts]
    first = responses[0]
    assert first.status_code == 401
    assert body_json(first) == {"error": "Invalid username or password", "status": 401, "request_id": "req-1"}
    for response in responses[1:]:
        assert response.status_code == first.status_code
        assert response.get_content() == first.get_content()
        assert response.headers.fields == first.headers.fields
    assert tokens.issued == {}


async def test_login_spends_the_same_hashing_on_an_unknown_user(store: UserStore, alice: User, tokens: FakeTokenService, monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[str] = []
    verify = PasswordHasher.verify

    def spy(self: PasswordHasher, password: str, encoded: str) -> bool:
        checked.append(encoded.split("$")[0])
        return verify(self, password, encoded)

    monkeypatch.setattr(PasswordHasher, "verify", spy)
    login = LoginHandler(store, tokens.issue, hasher=FAST)
    await login(ctx_for(body={"username": "Alice", "password": "wrong-password"}))
    assert checked == ["scrypt"]
    await login(ctx_for(body={"username": "nobody", "password": "wrong-password"}))
    assert checked == ["scrypt", "scrypt"]  # one scrypt check against the dummy hash


@pytest.mark.parametrize(
    "body",
    [{"username": "alice"}, {"password": "right-password"}, {"username": "", "password": ""}, {}],
)
async def test_login_without_credentials_is_400(store: UserStore, tokens: FakeTokenService, body: Any) -> None:
    response = await LoginHandler(store, tokens.issue, hasher=FAST)(ctx_for(body=body))
    assert response.status_code == 400
    assert body_json(response)["error"] == "Username and password are required"


# --------------------------------------------------------------------------------------
# auth.validate


async def test_validate_uses_the_identity_the_middleware_set(tokens: FakeTokenService) -> None:
    def verify_must_not_run(token: str) -> dict[str, Any]:
        raise AssertionError("the middleware already verified the token")

    identity = Identity("alice", ["user"], ["resources:read"], {"sub": "alice"})
    response = await ValidateHandler(verify_must_not_run)(ctx_for("GET", user=identity))
    assert response.status_code == 200
    assert body_json(response) == {
        "message": "Token is valid",
        "user": {"username": "alice", "roles": ["user"], "permissions": ["resources:read"]},
    }


async def test_validate_checks_the_token_itself_without_a_middleware(store: UserStore, alice: User, tokens: FakeTokenService) -> None:
    validate = ValidateHandler(tokens.verify, store=store)
    token = tokens.issue("Alice", ["user"], {})
    response = await validate(ctx_for("GET", headers={"Authorization": f"Bearer {token}"}))
    assert response.status_code == 200
    body = body_json(response)
    assert body["message"] == "Token is valid"
    # The stored profile, with the roles the token grants.
    assert body["user"] == {**alice.public(), "roles": ["user"], "permissions": []}


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Not authenticated"),
        ({"Authorization": "Basic YWxpY2U6eA=="}, "Not authenticated"),
        ({"Authorization": "Bearer forged"}, "Invalid or expired token"),
    ],
)
async def test_validate_answers_401_without_a_good_token(tokens: FakeTokenService, headers: dict[str, str], message: str) -> None:
    response = await ValidateHandler(tokens.verify)(ctx_for("GET", headers=headers))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert body_json(response)["error"] == message


async def test_validate_reads_the_configured_token_sources(tokens: FakeTokenService) -> None:
    token = tokens.issue("bob", ["user"], {})
    validate = ValidateHandler(tokens.verify, token_from=token_reader(["header", "cookie:session", "query:access_token"]))
    by_cookie = await validate(ctx_for("GET", headers={"Cookie": f"session={token}"}))
    by_query = await validate(ctx_for("GET", path=f"/auth/validate?access_token={token}"))
    assert by_cookie.status_code == by_query.status_code == 200
    assert body_json(by_query)["user"]["username"] == "bob"
    with pytest.raises(ValueError, match="unknown token source"):
        token_reader(["body:token"])


# --------------------------------------------------------------------------------------
# The audit log


async def test_the_log_has_usernames_but_never_passwords_hashes_or_tokens(
    store: UserStore, users_file: Path, tokens: FakeTokenService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    register = RegisterHandler(store, tokens.issue, ["user"], hasher=FAST)
    login = LoginHandler(store, tokens.issue, hasher=FAST)
    password = "Very-Secret-Password-123"
    await register(ctx_for(body={"username": "alice", "password": password}))
    await register(ctx_for(body={"username": "alice", "password": password}))  # 409
    await register(ctx_for(body={"username": "bob", "password": "Short-1"}))  # 400
    await login(ctx_for(body={"username": "alice", "password": password}))
    await login(ctx_for(body={"username": "alice", "password": password + "x"}))
    await login(ctx_for(body={"username": "mallory", "password": password}))

    levels = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "addons.users"]
    assert [lvl for lvl, _ in levels] == ["INFO", "WARNING", "WARNING", "INFO", "WARNING", "WARNING"]
    assert "'alice' registered" in levels[0][1]
    assert "'bob'" in levels[2][1] and "'mallory'" in levels[5][1]
    text = caplog.text
    assert password not in text and "Short-1" not in text
    assert file_users(users_file)["alice"]["password_hash"] not in text
    for token in tokens.issued:
        assert token not in text


# --------------------------------------------------------------------------------------
# The glue the auth plugin calls


class FakeAuthPlugin:
    """A test double of the auth plugin: its token service only (the users are real)."""

    def __init__(self) -> None:
        self.service = FakeTokenService()
        self.calls: list[tuple[Any, ...]] = []

    def issue_token(self, config: Any, username: str, roles: list[str], extra_claims: dict[str, Any]) -> str:
        self.calls.append(("issue", config, username))
        return self.service.issue(username, roles, extra_claims)

    def verify_token(self, config: Any, token: str) -> dict[str, Any]:
        self.calls.append(("verify", config))
        return self.service.verify(token)


def auth_config(users_file: Path | None, **extra: Any) -> SimpleNamespace:
    return SimpleNamespace(users_file=str(users_file) if users_file else None, default_roles=["member"], token_expiry_minutes=60, **extra)


def test_register_and_login_need_a_users_file() -> None:
    for handler in ("auth.register", "auth.login"):
        with pytest.raises(BuildError) as info:
            build_user_handler(handler, None, auth_config(None), FakeAuthPlugin())  # type: ignore[arg-type]
        assert str(info.value) == f"{handler} needs plugins.auth.config.users_file"
        assert info.value.loc == ("handler",)
    validate = build_user_handler("auth.validate", None, auth_config(None), FakeAuthPlugin())  # type: ignore[arg-type]
    assert isinstance(validate, ValidateHandler) and validate.store is None


def test_a_corrupt_users_file_fails_the_build_naming_it(users_file: Path) -> None:
    users_file.parent.mkdir(parents=True)
    users_file.write_text("{")
    with pytest.raises(BuildError) as info:
        build_user_handler("auth.login", None, auth_config(users_file), FakeAuthPlugin())  # type: ignore[arg-type]
    assert str(users_file.resolve()) in str(info.value) and info.value.loc == ("handler",)
    assert users_file.read_text() == "{"


async def test_the_built_handlers_share_one_store_and_use_the_plugin(users_file: Path) -> None:
    plugin = FakeAuthPlugin()
    config = auth_config(users_file, token_sources=["cookie:jwt"])
    register = build_user_handler("auth.register", None, config, plugin)  # type: ignore[arg-type]
    login = build_user_handler("auth.login", None, config, plugin)  # type: ignore[arg-type]
    validate = build_user_handler("auth.validate", None, config, plugin)  # type: ignore[arg-type]
    assert register.store is login.store is validate.store

    created = await register(ctx_for(body={"username": "erin", "password": "password-erin"}))
    assert created.status_code == 201
    assert body_json(created)["user"]["roles"] == ["member"]
    logged_in = await login(ctx_for(body={"username": "erin", "password": "password-erin"}))
    assert logged_in.status_code == 200
    token = body_json(logged_in)["token"]
    valid = await validate(ctx_for("GET", headers={"Cookie": f"jwt={token}"}))
    assert valid.status_code == 200
    assert body_json(valid)["user"]["username"] == "erin"
    assert [call[0] for call in plugin.calls] == ["issue", "issue", "verify"]
    assert all(call[1] is config for call in plugin.calls)


def test_an_unknown_handler_name_is_a_build_error(users_file: Path) -> None:
    with pytest.raises(BuildError, match="unknown auth handler"):
        build_user_handler("auth.logout", None, auth_config(users_file), FakeAuthPlugin())  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Usernames (issue 17, item 8): no dot-only names, separators, control characters or spaces


BAD_USERNAMES = [
    ".", "..", "...", "._-@", "-", "@",  # no letter or digit: dot-only names and punctuation
    "a/b", "../admin", "a\\b", "..\\admin",  # path separators
    "alice\n", "al\x00ice", "\talice", "alice\x7f", "alice\r\nX-Admin: 1",  # control characters (a final "\n" too)
    " ", "   ", "al ice", "alice\u00a0", "\u2028",  # spaces, Unicode ones too
    "a" * 65, "ålice", "аlice",  # too long; non-ASCII (the second one starts with a Cyrillic а)
    "alice%2F..", "al+ice", "al:ice",  # characters outside the set
]


@pytest.mark.parametrize("name", BAD_USERNAMES)
async def test_register_refuses_every_bad_username_with_a_400_naming_the_rule(store: UserStore, users_file: Path, tokens: FakeTokenService, name: str) -> None:
    assert not users.valid_username(name)
    register = RegisterHandler(store, tokens.issue, ["user"], hasher=FAST)
    response = await register(ctx_for(body={"username": name, "password": "password-1"}))
    assert response.status_code == 400
    message = body_json(response)["error"]
    assert message.startswith("username must be 1 to 64 characters: ASCII letters, digits")
    assert not users_file.exists() and tokens.issued == {}


@pytest.mark.parametrize(("name", "detail"), [("..", "'..' has no letter or digit"), ("a/b", "a path separator ('/')"), ("alice\n", "a control character ('\\n')"), ("a" * 65, "it has 65")])
def test_the_message_says_what_is_wrong(name: str, detail: str) -> None:
    assert detail in (users.username_problem(name) or "")


@pytest.mark.parametrize("name", ["a", "7", "x" * 64, "bob@example.com", "first.last", "A_b-c", ".alice", "alice."])
async def test_register_accepts_names_with_a_letter_or_digit(store: UserStore, tokens: FakeTokenService, name: str) -> None:
    register = RegisterHandler(store, tokens.issue, ["user"], hasher=FAST)
    response = await register(ctx_for(body={"username": name, "password": "password-1"}))
    assert response.status_code == 201, body_json(response)


@pytest.mark.parametrize("name", ["..", "a/b", "alice\n", " "])
def test_the_store_refuses_a_file_with_a_bad_username(users_file: Path, name: str) -> None:
    write_users(users_file, {name: {"password_hash": "x", "roles": []}})
    with pytest.raises(UserStoreError, match="not a valid username"):
        UserStore(users_file)


@pytest.mark.parametrize("name", ["..", "a\\b", "alice\n"])
async def test_the_store_adds_no_bad_username(store: UserStore, users_file: Path, name: str) -> None:
    with pytest.raises(ValueError, match="invalid username"):
        await store.add(make_user(name))
    assert not users_file.exists()


def test_seed_admin_refuses_a_bad_username(users_file: Path) -> None:
    script = Path(__file__).resolve().parents[2] / "blueprints" / "auth-api" / "seed_admin.py"
    env = {**os.environ, "ADMIN_PASSWORD": "password-1", "AUTH_USERS_FILE": str(users_file)}
    done = subprocess.run([sys.executable, str(script), "--username", ".."], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2 and "has no letter or digit" in done.stderr, done.stderr
    assert not users_file.exists()
