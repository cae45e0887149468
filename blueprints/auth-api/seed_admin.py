"""Add an admin user to the auth-api example's users file.

    ADMIN_PASSWORD='choose-a-password' .venv/bin/python blueprints/auth-api/seed_admin.py [--username admin]

Registration only ever gives the `user` role, so the demo's admin is made here: a user with the
roles `user` and `admin` and a salted scrypt hash of the password (never the password itself).
The file is the one the blueprint uses: $AUTH_USERS_FILE (relative to this folder, as in the
blueprint) or data/users.json. The gateway may be running: it reads the file again when it
changes, and the write takes the same locks as a registration.

Without ADMIN_PASSWORD the password is asked for. Exits 0 when the admin exists afterwards
(already there with the admin role counts), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from addons.auth import MIN_PASSWORD_LENGTH, USERNAME_RULE, User, UsernameTaken, UserStore, hash_password, username_problem, valid_username

HERE = Path(__file__).resolve().parent


def users_file() -> Path:
    return HERE / (os.environ.get("AUTH_USERS_FILE") or "data/users.json")  # an absolute value wins


async def seed(store: UserStore, username: str, password: str) -> str:
    existing = await store.get(username)
    if existing is not None:
        if "admin" in existing.roles:
            return f"{existing.username} is already an admin in {store.path}"
        raise UsernameTaken(username)
    created = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    await store.add(User(username, hash_password(password), ("user", "admin"), None, "Demo administrator", created))
    return f"added admin {username} to {store.path}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--username", default="admin")
    args = parser.parse_args()
    if not valid_username(args.username):
        parser.error(username_problem(args.username) or f"username must be {USERNAME_RULE}")
    password = os.environ.get("ADMIN_PASSWORD") or getpass.getpass(f"password for {args.username}: ")
    if len(password) < MIN_PASSWORD_LENGTH:
        print(f"the password must be at least {MIN_PASSWORD_LENGTH} characters", file=sys.stderr)
        return 1
    path = users_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        print(asyncio.run(seed(UserStore(path), args.username, password)))
    except UsernameTaken:
        print(f"{args.username} exists in {path} without the admin role: add \"admin\" to its roles in the file", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
