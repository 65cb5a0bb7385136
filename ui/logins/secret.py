"""The secret that signs login cookies (``CHAINLIT_AUTH_SECRET``).

For modes that may make their own (``LoginMode.explicit_secret`` false: local, password) a secret is
generated on first start unless one is set: kept in a shared PostgreSQL history database
(``ui.shared``) when there is one, else in the app folder (mode 0600), so replicas sharing either
agree. The secret never reaches a kernel (the kernels' environment is an allowlist).
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from ui.logins.base import SECRET_ENV, AuthSetupError

logger = logging.getLogger("weaver.ui.auth")

SECRET_FILE = ".auth_secret"


def ensure_secret(app_dir: Path, database_url: str | None = None) -> str:
    """The cookie-signing secret: ``CHAINLIT_AUTH_SECRET`` if set, else the one kept in a shared
    (PostgreSQL) history database, else the one in the app folder (created 0600 on first start).
    Modes that need an explicit secret refuse to start without one before this is asked."""
    given = os.environ.get(SECRET_ENV, "")
    if given:
        return given
    from ui.shared import is_shared, shared_secret

    if is_shared(database_url):
        assert database_url is not None
        import asyncpg  # the database drivers only when the secret is shared (`weaver user` needs neither)
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return shared_secret(database_url)
        except (OSError, SQLAlchemyError, asyncpg.PostgresError) as exc:
            raise AuthSetupError(
                f"the login secret is kept in the shared database, which cannot be reached ({type(exc).__name__}: "
                f"{str(exc)[:200]}); check WEAVER_DATABASE_URL, or set {SECRET_ENV} on every replica."
            ) from None
    return _secret_file(app_dir / SECRET_FILE)


def _secret_file(path: Path) -> str:
    """The secret in ``path``, made on first use. It is written to a private temporary file and
    linked into place, so a replica starting at the same moment reads a whole secret or makes none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(tmp, path)
            logger.info("made a new login secret in %s", path)
        except FileExistsError:
            pass  # another server made it first: use theirs
        finally:
            os.unlink(tmp)
    secret = path.read_text(encoding="utf-8").strip()
    if len(secret) < 32:
        raise AuthSetupError(f"{path} holds no usable secret; delete it to have a new one made.")
    os.chmod(path, 0o600)
    return secret
