"""The auth plugin's endpoints: `auth.register`, `auth.login` and `auth.validate`, on the user
store of addons.auth.users.

Tokens
------
This module issues and checks no token itself. The handlers get an `issue(username, roles,
extra_claims) -> token` callable and a `verify(token) -> claims` callable (which raises on a bad
token); `build_user_handler` binds them to the auth plugin's `issue_token` and `verify_token`.
The extra claims are `email` and `name` (the full name) when the user has them.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from mitmproxy import http

from addons.auth.passwords import DEFAULT_HASHER, MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, PasswordHasher
from addons.auth.tokens import extract_token
from addons.auth.users import (
    CONTROL_CHARACTERS,
    USERNAME_RULE,
    User,
    UsernameTaken,
    UserStore,
    UserStoreError,
    shared_store,
    username_problem,
    valid_username,
)
from backworks_core.bodies import loads_json
from backworks_core.context import Identity, RequestContext, json_response
from backworks_core.plugins import BuildError
from backworks_core.limits import request_body

if TYPE_CHECKING:
    from backworks_core.context import Handler
    from backworks_core.loader import EndpointSpec

logger = logging.getLogger("addons.users")  # the name these log lines have always had (log filters, docs)

MAX_EMAIL_LENGTH = 254
MAX_FULL_NAME_LENGTH = 200
MAX_BODY_BYTES = 64 * 1024
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")

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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    if CONTROL_CHARACTERS.search(value):
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
