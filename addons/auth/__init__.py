"""The `auth` plugin: JWT bearer authentication and role/permission authorization as a middleware,
and its own user store. A package; each module can be used and tested alone, and each imports
only modules listed above it here (never this package's `__init__`; nothing imports `plugin`):

- `keys`: algorithm families, which key may check which algorithm, PEM key loading;
- `settings`: `AuthConfig`, `AuthMiddlewareConfig`, validated when the blueprint loads; key
  files are read and checked then, so a bad key is a located error, never a runtime surprise;
- `tokens`: `extract_token` (where the token is), `Verifier` (is it genuine and current, whose
  is it), `issue_token`/`sign_token` (for the `auth.login`/`auth.register` handlers);
- `authorization`: `authorize` (may this identity do this), `challenge` (`WWW-Authenticate`);
- `jwks`: `parse_jwks`, `fetch_url`, `JwksCache`, `KeyRing` (the keys for a token);
- `middleware`: `Authenticator` (verifier, keys, verified-token cache) and `AuthMiddleware`,
  which applies a decision to the flow: deny with a JSON error and a `WWW-Authenticate`
  challenge, or set `ctx.user`, forward claims, strip the token;
- `users`, `passwords`: the JSON user store and its scrypt hashes (the file format is in
  `users`' docstring); `handlers`: `auth.register`, `auth.login`, `auth.validate`;
- `plugin`: `AuthPlugin`, the mitmproxy addon, which builds the middlewares and the handlers.

This module only re-exports the names used outside the package. The log lines keep their
names: `addons.auth` (decisions, JWKS) and `addons.users` (the user endpoints).

Decisions where the blueprint format is silent (documented here and in the reference):

- Verification: the algorithm comes from the token header but is accepted only when it is in
  `algorithms` *and* fits the key it would be checked with: HS* only with `jwt_secret` (never a
  public key), RS*/PS* only with RSA keys, ES256/ES384/ES512/ES256K only with an EC key on the
  matching curve, EdDSA only with Ed25519/Ed448. `none` is refused when the blueprint loads.
- A token naming its own key (`jku`, `x5u`, `jwk`, `x5c`) is refused: keys are never fetched
  from a token. `kid` is only a lookup key in the JWKS cache. `crit` (unknown extensions), JWE
  (5 segments) and tokens over 8 KiB are refused. Base64url must be canonical and unpadded; the
  JSON must not repeat a key (no parser-differential tricks).
- `exp` and `sub` are always required (a token that never expires is refused; `sub` is the
  username). `iat` later than now + leeway is refused. A token carrying `aud` is refused when
  no `audience` is configured (RFC 7519 §4.1.3).
- Roles and permissions claims: a list of strings, or one string of space-separated values
  (OAuth's `scope` style); anything else rejects the token. A claim name is looked up as
  written first, then as a dotted path into nested objects (`realm_access.roles`).
  `default_roles` are the roles given at registration; a token without a roles claim has none.
- Wildcards: `*` matches any run of characters inside one `:`-separated segment; a granted
  permission whose last segment is `*` also covers deeper segments (`resources:*` grants
  `resources:read` and `resources:read:own`); `*` alone grants everything. Matching is
  case-sensitive. A required permission is taken literally.
- Token sources are tried in the listed order; the first source holding a token wins. The
  `Bearer` scheme is case-insensitive (RFC 7235); another scheme (`Basic`) counts as no token.
  Two `Authorization` headers, or a repeated cookie/query parameter, are refused as ambiguous.
  An empty cookie or query value counts as absent; `Bearer` with nothing after it is malformed.
- A missing or invalid token is `401` with `WWW-Authenticate: Bearer error="invalid_token"`
  for both cases, as the format says (RFC 6750 would leave the error out when no token is
  sent); a valid token lacking the role or permission is `403` with `error="insufficient_scope"`.
  An exception inside the middleware denies with `500`: never forwarded (fail closed).
- `forward_claims` names are removed from every client request the blueprint handles (any case,
  `_` or `-`; backworks_core/forwarding.py, via `AuthPlugin.identity_headers`) before any
  middleware runs; this middleware removes them again (no spoofing), then sets each from the claim (strings as they are, numbers and booleans as JSON, lists joined with ", ",
  objects as compact JSON); a value with control characters is not sent. `strip_token` removes
  the credential from every configured source (bearer `Authorization`, the named cookies and
  query parameters), not only the one that was used.
- JWKS: fetched with aiohttp on the event loop, never blocking it; cached; fetched again when
  older than `jwks_max_age` or when a token names an unknown `kid`, but never more often than
  once per `jwks_min_interval`. A failed fetch keeps the keys already known. `http://` only
  for loopback hosts. Symmetric (`oct`) and private keys in a JWKS are ignored.
- An audit line per decision on the `addons.auth` logger (INFO allowed, WARNING denied) names
  who, what and why, never the token.
"""

from __future__ import annotations

from addons.auth.authorization import Denial, authorize, challenge, has_permission, permission_matches
from addons.auth.handlers import LoginHandler, RegisterHandler, ValidateHandler, build_user_handler, token_reader
from addons.auth.jwks import JwksCache, JwksError, JwksKey, KeyRing, fetch_url, parse_jwks
from addons.auth.keys import SUPPORTED_ALGORITHMS, describe_key, key_fits, load_private_key, load_public_key
from addons.auth.middleware import AuthMiddleware, Authenticator, claim_header_value, forward_claims, strip_tokens
from addons.auth.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, PasswordHasher, hash_password, verify_password
from addons.auth.plugin import AuthPlugin, demo_secret_reason
from addons.auth.settings import AuthConfig, AuthMiddlewareConfig
from addons.auth.tokens import (
    ExtractedToken,
    ParsedToken,
    TokenIssueError,
    TokenRejected,
    Verifier,
    claim_value,
    extract_token,
    issue_token,
    sign_token,
    strict_json,
)
from addons.auth.users import USERNAME_RULE, User, UserStore, UserStoreError, UsernameTaken, shared_store, username_problem, valid_username

__all__ = [
    "AuthConfig",
    "AuthMiddleware",
    "AuthMiddlewareConfig",
    "AuthPlugin",
    "Authenticator",
    "Denial",
    "ExtractedToken",
    "JwksCache",
    "JwksError",
    "JwksKey",
    "KeyRing",
    "LoginHandler",
    "MAX_PASSWORD_LENGTH",
    "MIN_PASSWORD_LENGTH",
    "ParsedToken",
    "PasswordHasher",
    "RegisterHandler",
    "SUPPORTED_ALGORITHMS",
    "TokenIssueError",
    "TokenRejected",
    "USERNAME_RULE",
    "User",
    "UserStore",
    "UserStoreError",
    "UsernameTaken",
    "ValidateHandler",
    "Verifier",
    "authorize",
    "build_user_handler",
    "challenge",
    "claim_header_value",
    "claim_value",
    "demo_secret_reason",
    "describe_key",
    "extract_token",
    "fetch_url",
    "forward_claims",
    "has_permission",
    "hash_password",
    "issue_token",
    "key_fits",
    "load_private_key",
    "load_public_key",
    "parse_jwks",
    "permission_matches",
    "shared_store",
    "sign_token",
    "strict_json",
    "strip_tokens",
    "token_reader",
    "username_problem",
    "valid_username",
    "verify_password",
]
