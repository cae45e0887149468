"""Benchmark: CPU cost of verifying a JWT per request, HS256, RS256 (2048-bit) and ES256 (P-256).

Run with ``.venv/bin/python bench/auth_cost.py``. Keys are generated with `cryptography` and
written as PEM files to a temporary folder; each algorithm gets an AuthConfig as a blueprint
would declare it, and one token minted with `issue_token` (sub, iat, exp, jti, roles). Measured:
``await authenticator.verify(token)``, many calls per repeat in one asyncio loop, with the cache
of verified tokens off (``verified_cache_size: 0``: every call checks the signature and the
claims) and on (the same token each time: every call after the first is a hit). Reported: the
best of the repeats, in microseconds per verification, and that cost as a share of the CPU time
bare mitmdump spends per proxied request on the reference machine (BARE_PROXY_US).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402

from addons.auth import AuthConfig, Authenticator, issue_token  # noqa: E402

REPEATS = 7
RUNS = {"uncached": 1_000, "cached": 20_000}  # verifications per repeat
BARE_PROXY_US = 2900.0  # bare mitmdump CPU per proxied request (docs/performance.md)
SECRET = "bench-" + "s" * 58


def write_key(folder: Path, name: str, key: Any) -> str:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (folder / f"{name}.pem").write_bytes(pem)
    return f"{name}.pem"


def configs(folder: Path) -> dict[str, dict[str, Any]]:
    """Blueprint settings per algorithm (paths relative to `folder`)."""
    return {
        "HS256": {"jwt_secret": SECRET, "algorithms": ["HS256"]},
        "RS256": {"private_key": write_key(folder, "rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048)), "algorithms": ["RS256"]},
        "ES256": {"private_key": write_key(folder, "p256", ec.generate_private_key(ec.SECP256R1())), "algorithms": ["ES256"]},
    }


async def per_verify_us(authenticator: Authenticator, token: str, runs: int) -> float:
    """Best of the repeats, microseconds per verification: the least disturbed by other load."""
    verify = authenticator.verify
    await verify(token)  # warm: key objects, and the cache entry when the cache is on
    results = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        for _ in range(runs):
            await verify(token)
        results.append((time.perf_counter() - started) / runs * 1e6)
    return min(results)


async def measure(folder: Path) -> list[tuple[str, float, float]]:
    rows = []
    for algorithm, settings in configs(folder).items():
        context = {"base_dir": str(folder)}
        uncached = AuthConfig.model_validate({**settings, "verified_cache_size": 0}, context=context)
        cached = AuthConfig.model_validate(settings, context=context)  # the default cache: 1024 tokens, 60 s
        token = issue_token(cached, "alice", ["user", "admin"])
        # sanity: both verify the token, and a tampered one is refused
        for config in (uncached, cached):
            assert (await Authenticator(config).verify(token))["sub"] == "alice"
        head, payload, signature = token.split(".")
        try:
            await Authenticator(cached).verify(f"{head}.{payload}.{signature[::-1]}")
        except Exception:
            pass
        else:
            raise AssertionError("a tampered token verified")
        cost_uncached = await per_verify_us(Authenticator(uncached), token, RUNS["uncached"])
        cost_cached = await per_verify_us(Authenticator(cached), token, RUNS["cached"])
        rows.append((algorithm, cost_uncached, cost_cached))
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="backworks-auth-bench-") as folder:
        rows = asyncio.run(measure(Path(folder)))
    print(
        f"Authenticator.verify, one token per algorithm; {RUNS['uncached']:,} (uncached) / {RUNS['cached']:,} (cached)"
        f" verifications x {REPEATS} repeats, best of; share of {BARE_PROXY_US:,.0f} µs bare mitmdump CPU per request"
    )
    print(f"{'algorithm':<22} {'µs uncached':>12} {'µs cached':>10} {'% uncached':>11} {'% cached':>9}")
    for algorithm, uncached, cached in rows:
        label = {"RS256": "RS256 (RSA 2048)", "ES256": "ES256 (P-256)"}.get(algorithm, algorithm)
        print(f"{label:<22} {uncached:>12.1f} {cached:>10.1f} {uncached / BARE_PROXY_US:>11.1%} {cached / BARE_PROXY_US:>9.1%}")


if __name__ == "__main__":
    main()
