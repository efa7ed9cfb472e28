"""The budget service's settings: one object per process, read from the environment once.

`FEDCARE_ADMIN_TOKEN` is the admin's bearer token. The service refuses to start
with an empty or placeholder token unless development mode is asked for
explicitly (`FEDCARE_BUDGET_DEVELOPMENT=1` or `fedcare budget serve --dev`),
and then it says so loudly in the log.

The service speaks HTTPS with a certificate from the federation CA
(`FEDCARE_BUDGET_TLS_CERTFILE`, `FEDCARE_BUDGET_TLS_KEYFILE`; the key file must be
0600). Plain HTTP needs `FEDCARE_BUDGET_INSECURE_HTTP=1` (`--insecure-http`): for
loopback-only test services, or behind a proxy that terminates TLS; it is logged loudly.
"""

from __future__ import annotations

import logging
import secrets
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.private_files import is_private
from server.budget.limits import MAX_TOKEN_LENGTH

log = logging.getLogger("fedcare.budget")

# Values people paste from examples; none of them is a secret.
PLACEHOLDER_TOKENS = frozenset(
    {"changeme", "changethis", "change-me", "secret", "password", "admin", "token", "test", "example", "xxx", "dev"}
)
MIN_TOKEN_LENGTH = 16


class BudgetSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEDCARE_BUDGET_", extra="ignore", populate_by_name=True)

    database_url: str = Field(
        default="sqlite:///./fedcare-budget.db",
        validation_alias=AliasChoices("FEDCARE_BUDGET_DATABASE_URL", "DATABASE_URL", "database_url"),
        description="SQLAlchemy URL: sqlite:///path.db (WAL mode) or postgresql+psycopg://user@host/db",
    )
    admin_token: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=AliasChoices("FEDCARE_ADMIN_TOKEN", "admin_token"),
        description="The admin's bearer token (at least 16 characters, not a placeholder).",
    )
    development: bool = Field(
        default=False,
        validation_alias=AliasChoices("FEDCARE_BUDGET_DEVELOPMENT", "development"),
        description="Allow an empty or placeholder admin token. Never in production.",
    )
    sqlite_busy_timeout_ms: int = Field(default=10_000, ge=0)
    # Measured on 2 cores: 2 reader threads serve ~15% more reads than 8 (less GIL contention), at lower p99.
    read_threads: int = Field(default=2, ge=1, description="Threads for reads (per worker process)")
    write_threads: int = Field(default=2, ge=1, description="Threads for writes, apart from the readers'")
    db_pool_size: int = Field(
        default=8, ge=1, description="Connections kept open; as many again may be added under load"
    )
    token_cache_seconds: float = Field(default=60.0, ge=0, description="How long a verified token is remembered")
    dashboard_points: int = Field(default=1000, ge=10, description="Most recent events plotted per institution")
    dashboard_session_hours: float = Field(
        default=8.0, gt=0, le=24 * 30, description="How long a dashboard sign-in lasts before the next one"
    )
    tls_certfile: Path | None = Field(
        default=None, description="The service's certificate (PEM), issued by the federation CA"
    )
    tls_keyfile: Path | None = Field(default=None, description="Its private key (PEM, mode 0600; never logged)")
    insecure_http: bool = Field(
        default=False,
        description="Serve plain HTTP: loopback tests, or behind a proxy that terminates TLS. Logged loudly.",
    )

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> BudgetSettings:
        problem = admin_token_problem(self.admin_token.get_secret_value())
        if problem is None:
            return self
        if not self.development:
            raise ValueError(
                f"FEDCARE_ADMIN_TOKEN {problem}. Set it to a long random value, e.g. "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`, or start in development mode "
                "(FEDCARE_BUDGET_DEVELOPMENT=1 / --dev) for a throwaway local service."
            )
        if not self.admin_token.get_secret_value():
            self.admin_token = SecretStr(secrets.token_urlsafe(32))
            log.warning(
                "DEVELOPMENT MODE: FEDCARE_ADMIN_TOKEN is empty; generated a one-off admin token for this process: %s",
                self.admin_token.get_secret_value(),
            )
        else:
            log.warning("DEVELOPMENT MODE: FEDCARE_ADMIN_TOKEN %s; this service must not hold real data", problem)
        return self

    @model_validator(mode="after")
    def _check_tls_files(self) -> BudgetSettings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            given, missing = (
                ("FEDCARE_BUDGET_TLS_CERTFILE", "FEDCARE_BUDGET_TLS_KEYFILE")
                if self.tls_keyfile is None
                else ("FEDCARE_BUDGET_TLS_KEYFILE", "FEDCARE_BUDGET_TLS_CERTFILE")
            )
            raise ValueError(f"{given} is set but {missing} is not: TLS needs the certificate and its key")
        if self.tls_certfile is None or self.tls_keyfile is None:
            return self
        for path, name in ((self.tls_certfile, "certificate"), (self.tls_keyfile, "key")):
            if not path.is_file():
                raise ValueError(
                    f"the TLS {name} {path} does not exist; issue the budget service's certificate with "
                    "`fedcare federation budget-cert --san HOST` (it writes budget/server.pem and budget/server.key)"
                )
        if not is_private(self.tls_keyfile):
            raise ValueError(
                f"the TLS key {self.tls_keyfile} may be read by other users; run `chmod 600 {self.tls_keyfile}`"
            )
        return self

    def transport_problem(self) -> str | None:
        """Why this service must not serve as configured, or None: HTTPS, or plain HTTP asked for by name."""
        if self.tls_certfile is not None or self.insecure_http:
            return None
        return (
            "no TLS certificate: set FEDCARE_BUDGET_TLS_CERTFILE and FEDCARE_BUDGET_TLS_KEYFILE (`fedcare federation "
            "budget-cert` issues them from the federation CA), or serve plain HTTP on purpose with "
            "FEDCARE_BUDGET_INSECURE_HTTP=1 / --insecure-http (loopback only, or behind a TLS proxy)"
        )

    @property
    def scheme(self) -> str:
        return "https" if self.tls_certfile is not None else "http"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def admin_token_problem(token: str) -> str | None:
    """Why `token` is unfit as the admin secret, or None when it is fine."""
    if not token.strip():
        return "is empty"
    if token.strip().lower() in PLACEHOLDER_TOKENS:
        return f"is the placeholder {token!r}"
    if len(token) < MIN_TOKEN_LENGTH:
        return f"is shorter than {MIN_TOKEN_LENGTH} characters"
    if len(token) > MAX_TOKEN_LENGTH:
        return f"is longer than {MAX_TOKEN_LENGTH} characters (the service refuses longer bearer tokens)"
    return None


@lru_cache(maxsize=1)
def get_settings() -> BudgetSettings:
    """The process's settings, read from the environment on first use."""
    return BudgetSettings()
