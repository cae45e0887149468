"""`AuthPlugin`: the mitmproxy addon and Backworks plugin that builds the auth middlewares and the
auth.register/login/validate handlers, one `Authenticator` per config; its lint (demo secrets)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from addons.auth.keys import HMAC_ALGORITHMS, describe_key, key_fits
from addons.auth.middleware import AuthMiddleware, Authenticator
from addons.auth.settings import AuthConfig, AuthMiddlewareConfig
from addons.auth.tokens import issue_token
from backworks_core.context import Identity
from backworks_core.plugins import BuildError, Plugin

if TYPE_CHECKING:
    from backworks_core.context import Handler
    from backworks_core.loader import EndpointSpec, LoadedBlueprint, MiddlewareSpec

# ------------------------------------------------------------------------------------------
# Demo secrets: a shared secret that has been published (in a repository, a tutorial, jwt.io)
# lets anyone who read it sign tokens for any user and role. Compared on letters and digits only.
KNOWN_DEMO_SECRETS = frozenset(
    {
        "secret", "secretkey", "changeme", "changeit", "password", "passw0rd", "default", "test", "testing", "example",
        "yoursecretkey", "yoursecret", "yourjwtsecret", "your256bitsecret", "your384bitsecret", "your512bitsecret",
        "mysecret", "mysecretkey", "myjwtsecret", "supersecret", "supersecretkey", "topsecret", "jwtsecret", "jwtsecretkey",
        "shhhhh", "keyboardcat", "s3cr3t", "authapidemosecretdonotuseinproduction",
    }
)
# Words that only a placeholder holds ("demo-secret-do-not-use-in-production", "change-me-please").
DEMO_SECRET_MARKERS = ("demo", "donotuse", "dontuse", "notforproduction", "inproduction", "insecure", "notsecure", "changeme", "changethis", "replaceme", "replacethis", "yoursecret", "placeholder", "example", "bitsecret")
DEMO_SECRET_HINT = "set a long random secret from the environment, e.g. jwt_secret: \"${JWT_SECRET}\" with JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"


def demo_secret_reason(secret: str) -> str | None:
    """Why `secret` is a published or placeholder value (a lint warning), or None."""
    compact = "".join(c for c in secret.lower() if c.isalnum())
    if compact in KNOWN_DEMO_SECRETS:
        return "a well-known example value"
    marker = next((m for m in DEMO_SECRET_MARKERS if m in compact), None)
    if marker is not None:
        return f"a placeholder (it says {marker!r})"
    for size in range(1, min(16, len(secret) // 2) + 1):  # "s3cr3t-s3cr3t-…", "aaaa…": no randomness in it
        if secret[size:] == secret[:-size]:  # periodic: the same `size` characters over and over
            return f"a {size}-character pattern repeated"
    return None


# The plugin


class AuthPlugin(Plugin):
    """mitmproxy addon and Backworks plugin: keeps one Authenticator (and JWKS cache) per config."""

    name = "auth"
    description = "JWT authentication, roles and permissions; the auth.register/login/validate endpoints"
    Config = AuthConfig
    MiddlewareConfig = AuthMiddlewareConfig
    handlers = ("auth.register", "auth.login", "auth.validate")

    def __init__(self) -> None:
        self._authenticators: dict[int, Authenticator] = {}

    @classmethod
    def lint(cls, config: BaseModel) -> list[tuple[tuple[str | int, ...], str]]:
        assert isinstance(config, AuthConfig)
        notes: list[tuple[tuple[str | int, ...], str]] = []
        hmac_algorithms = [a for a in config.allowed_algorithms if a in HMAC_ALGORITHMS]
        if config.jwt_secret is not None and hmac_algorithms and (reason := demo_secret_reason(config.jwt_secret)) is not None:
            notes.append(
                (
                    ("jwt_secret",),
                    f"jwt_secret is {reason}: anyone who has read it (in this repository, a README, a tutorial) can forge tokens "
                    f"for any user and role; {DEMO_SECRET_HINT}",
                )
            )
        if config.secret is not None:
            if not hmac_algorithms:
                notes.append((("jwt_secret",), "jwt_secret is not used: no HS* algorithm is in algorithms"))
            else:
                needed = max(HMAC_ALGORITHMS[a]().digest_size for a in hmac_algorithms)
                if len(config.secret) < needed:
                    notes.append(
                        (("jwt_secret",), f"jwt_secret is {len(config.secret)} bytes; {'/'.join(hmac_algorithms)} wants at least {needed} random bytes (RFC 7518 §3.2)")
                    )
        key = config.verification_key
        if key is not None and config.jwks_url is None and not any(key_fits(a, key) for a in config.allowed_algorithms):
            where = "public_key" if config.public_key is not None else "private_key"
            notes.append(((where,), f"the {describe_key(key)} key is not used: no algorithm in algorithms fits it"))
        if config.users_file is not None and config.signing_algorithm is None:
            notes.append((("users_file",), "auth.login/auth.register cannot issue tokens: add jwt_secret, or a private_key fitting an algorithm"))
        return notes

    @classmethod
    def identity_headers(cls, config: BaseModel) -> list[str]:
        assert isinstance(config, AuthConfig)
        return list(config.forward_claims)

    def authenticator_for(self, config: AuthConfig) -> Authenticator:
        """One per config: the middlewares and handlers of a blueprint share its JWKS cache."""
        authenticator = self._authenticators.get(id(config))
        if authenticator is None or authenticator.config is not config:
            authenticator = Authenticator(config)
            self._authenticators[id(config)] = authenticator
        return authenticator

    def issue_token(
        self, config: AuthConfig, username: str, roles: Sequence[str] | None = None, extra_claims: Mapping[str, Any] | None = None
    ) -> str:
        """For auth.register/auth.login (addons.auth.handlers): see addons.auth.tokens.issue_token."""
        return issue_token(config, username, roles, extra_claims)

    async def verify_token(self, config: AuthConfig, token: str) -> Identity:
        """For auth.validate (addons.auth.handlers): the identity of a genuine token; TokenRejected otherwise.

        Uses the config's shared Authenticator, so JWKS keys are cached with the middlewares'.
        """
        return await self.authenticator_for(config).authenticate(token)

    def build_middleware(self, middleware: MiddlewareSpec, config: BaseModel) -> AuthMiddleware:
        assert isinstance(config, AuthConfig)
        assert isinstance(middleware.config, AuthMiddlewareConfig)
        return AuthMiddleware(middleware.name, middleware.config, self.authenticator_for(config))

    def build_handler(self, handler: str, endpoint: EndpointSpec, config: BaseModel) -> Handler:
        """auth.register/login/validate live in addons.auth.handlers, on the user store (addons.auth.users)."""
        assert isinstance(config, AuthConfig)
        try:
            from addons.auth.handlers import build_user_handler
        except ImportError as exc:
            raise BuildError(f"handler {handler!r} is not available: the user store could not be loaded ({exc})", ("handler",)) from None
        return build_user_handler(handler, endpoint, config, self)

    def apply_blueprint(self, config: BaseModel | None, blueprint: LoadedBlueprint) -> None:
        """Forget the authenticators of configs that are no longer served."""
        live = id(config) if config is not None else None
        self._authenticators = {k: v for k, v in self._authenticators.items() if k == live}
