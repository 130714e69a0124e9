"""config.toml -> frozen dataclasses. Every error names the TOML key path and how to fix it."""

from __future__ import annotations

import importlib.util
import os
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

from relayproxy.config._tables import (
    ConfigError,
    _check_keys,
    _get,
    _known,
    _numbers,
    _price,
    _require,
    _table,
    _usd,
)
from relayproxy.config.credentials import CredentialError, credential_name, read_secret
from relayproxy.config.email import EmailConfig, EmailConfigError, parse_email

__all__ = [
    "PROTOCOLS",
    "BillingConfig",
    "Config",
    "ConfigError",
    "DashboardConfig",
    "Limits",
    "ModelConfig",
    "ProviderConfig",
    "ServerConfig",
    "Timeouts",
    "default_public_url",
    "load_config",
    "parse_config",
    "parse_listen",
]

PROTOCOLS = ("openai", "anthropic", "gemini")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
MIN_DISCOUNT = Fraction(3, 10)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    database: Path | str = Path("relayproxy.db")  # a SQLite path, or a postgresql:// URL (a str)
    event_loop: str = "auto"  # auto (uvloop when installed) | uvloop | asyncio
    database_password_env: str = "PGPASSWORD"
    database_pool_size: int = 10
    hold_lease_s: float = 15.0
    # PostgreSQL: settlements the database could not take when the gateway stopped, applied at its next start
    settlement_journal: Path = Path("relayproxy-journal.jsonl")


@dataclass(frozen=True, slots=True)
class BillingConfig:
    discount: Fraction = MIN_DISCOUNT
    stripe_secret_key_env: str = "STRIPE_SECRET_KEY"
    stripe_webhook_secret_env: str = "STRIPE_WEBHOOK_SECRET"
    topup_min_usd: Decimal = Decimal(5)  # Checkout top-up bounds, whole cents
    topup_max_usd: Decimal = Decimal(1000)
    success_url: str | None = None  # where Stripe Checkout sends the payer back; required for top-ups
    cancel_url: str | None = None
    stripe_api_base: str | None = None  # tests point the Stripe library at a fake server
    livemode: bool = False  # webhook events whose livemode differs are ignored
    initial_credit_usd: Decimal = Decimal(5)  # granted to account 'default' when a fresh store is created

    def stripe_secret_key(self) -> str | None:
        """The Stripe API key (environment, else credential file), or None when unset or empty."""
        return _secret(self.stripe_secret_key_env, "stripe_secret_key_env")

    def stripe_webhook_secret(self) -> str | None:
        """The webhook signing secret (whsec_...; environment, else credential file), or None."""
        return _secret(self.stripe_webhook_secret_env, "stripe_webhook_secret_env")


def _secret(env_name: str, key: str) -> str | None:
    try:
        return read_secret(env_name)
    except CredentialError as exc:
        raise ConfigError(f"[billing] {key}: {exc}") from None


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    protocol: str
    base_url: str
    api_key_env: str
    # False: same-protocol streams are re-encoded through the canonical model instead of passing
    # through, which repairs a provider's stream quirks (Moonshot's index-less tool deltas).
    passthrough: bool = True
    # The upstream key, read once when the config is loaded: the environment variable, else the
    # systemd credential file named after it (``$CREDENTIALS_DIRECTORY/<name in lower case>``).
    # None disables the provider (its models answer 503); ``key_problem`` then says why when the
    # credential file exists but cannot be used ("" when the key is simply not set).
    api_key: str | None = field(default=None, repr=False)
    key_problem: str = ""
    # OpenAI protocol only: the provider serves the Responses API, so a Responses client reaches
    # its ``{base_url}/responses`` as it came (with ``passthrough``) instead of Chat Completions.
    responses: bool = False


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    provider: str
    upstream_model: str
    input_price: float
    output_price: float
    cached_input_price: float
    max_output_tokens: int
    fallback: tuple[str, ...] = ()
    context_length: int | None = None  # the model's context window, for /v1/models; None: not configured


@dataclass(frozen=True, slots=True)
class Timeouts:
    header_read_s: float = 10.0
    body_read_s: float = 60.0
    keepalive_idle_s: float = 75.0
    upstream_connect_s: float = 5.0
    upstream_first_byte_s: float = 300.0
    stream_idle_s: float = 120.0
    client_write_stall_s: float = 60.0
    keepalive_ping_s: float = 15.0
    drain_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int = 32 * 1024 * 1024
    max_header_bytes: int = 16384
    max_headers: int = 100
    per_key_concurrency: int = 64
    per_key_rpm: int = 0
    free_aborts_per_hour: int = 30


@dataclass(frozen=True, slots=True)
class DashboardConfig:
    signup: str = "closed"  # "open": anyone may sign up at /signup; "closed": 404
    signup_credit_usd: Decimal = Decimal(0)  # granted to each new account on signup
    public_url: str = "http://127.0.0.1:8080"  # the base of links in pages and Stripe redirects, no trailing /

    @property
    def secure(self) -> bool:
        return self.public_url.startswith("https://")


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    server: ServerConfig
    billing: BillingConfig
    providers: dict[str, ProviderConfig]
    models: dict[str, ModelConfig]
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    email: EmailConfig | None = None  # [email] (config/email.py); None: the dashboard sends no mail

    def missing_keys(self) -> list[ProviderConfig]:
        """Providers without a usable API key (disabled), as resolved when the config was loaded."""
        return [p for p in self.providers.values() if p.api_key is None]


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; raise ConfigError with a fix on any problem."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found; pass --config PATH or set RELAYPROXY_CONFIG") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read the file ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse_config(raw, p)


def parse_config(raw: dict[str, Any], path: Path) -> Config:
    _check_keys(raw, "", {"server", "billing", "providers", "models", "timeouts", "limits", "dashboard", "email"})
    base = path.resolve().parent
    server = _server(_table(raw, "server"), base)
    providers = {n: _provider(n, t) for n, t in _table(raw, "providers").items()}
    models = {n: _model(n, t, providers) for n, t in _table(raw, "models").items()}
    for m in models.values():
        for i, fb in enumerate(m.fallback):
            if fb not in models:
                raise ConfigError(f'[models."{m.name}"] fallback[{i}]: unknown model "{fb}"; {_known(models)}')
    return Config(
        path=path,
        server=server,
        billing=_billing(_table(raw, "billing")),
        providers=providers,
        models=models,
        timeouts=_numbers(Timeouts, _table(raw, "timeouts"), "timeouts", float),
        limits=_numbers(Limits, _table(raw, "limits"), "limits", int),
        dashboard=_dashboard(_table(raw, "dashboard"), server),
        email=_email(raw),
    )


def parse_listen(value: str, where: str = "[server] listen") -> tuple[str, int]:
    """'HOST:PORT' (IPv6 as '[::1]:8080') -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f'{where}: expected "HOST:PORT" such as "127.0.0.1:8080", got "{value}"')
    return host.strip("[]") or "0.0.0.0", int(port)


# -- sections -----------------------------------------------------------------------------------


def _server(t: dict[str, Any], base: Path) -> ServerConfig:
    _check_keys(
        t,
        "server",
        {"listen", "workers", "database", "event_loop", "database_password_env", "database_pool_size", "hold_lease_s"}
        | {"settlement_journal"},
    )
    host, port = parse_listen(_get(t, "server", "listen", str, "127.0.0.1:8080"))
    workers = _get(t, "server", "workers", int, 1)
    if workers < 1:
        raise ConfigError(f"[server] workers: must be 1 or more, got {workers}")
    db_text = _get(t, "server", "database", str, "relayproxy.db")
    pool_size = _get(t, "server", "database_pool_size", int, 10)
    if pool_size < 1:
        raise ConfigError(f"[server] database_pool_size: must be 1 or more, got {pool_size}")
    lease = _get(t, "server", "hold_lease_s", float, 15.0)
    if not 1 <= lease <= 3600:
        raise ConfigError(f"[server] hold_lease_s: must be between 1 and 3600 seconds, got {lease}")
    db: Path | str = db_text if db_text.startswith(("postgresql://", "postgres://")) else Path(db_text)
    if isinstance(db, Path) and not db.is_absolute():
        db = base / db
    event_loop = _get(t, "server", "event_loop", str, "auto")
    if event_loop not in EVENT_LOOPS:
        raise ConfigError(f"[server] event_loop: must be one of {', '.join(EVENT_LOOPS)}, got {event_loop!r}")
    if event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ConfigError('[server] event_loop = "uvloop", but uvloop is not installed (pip install uvloop)')
    return ServerConfig(
        host=host,
        port=port,
        workers=workers,
        database=db,
        event_loop=event_loop,
        database_password_env=_get(t, "server", "database_password_env", str, "PGPASSWORD"),
        database_pool_size=pool_size,
        hold_lease_s=float(lease),
        settlement_journal=base / _get(t, "server", "settlement_journal", str, "relayproxy-journal.jsonl"),
    )


def _billing(t: dict[str, Any]) -> BillingConfig:
    allowed = {"discount", "topup_min_usd", "topup_max_usd", "success_url", "cancel_url", "stripe_api_base"}
    allowed |= {"initial_credit_usd"}
    _check_keys(t, "billing", allowed | {"livemode", "stripe_secret_key_env", "stripe_webhook_secret_env"})
    discount = Fraction(str(_get(t, "billing", "discount", float, 0.30)))
    if not MIN_DISCOUNT <= discount < 1:
        raise ConfigError(
            f"[billing] discount: must be at least 0.30 (30 % below list) and below 1, got {float(discount)}"
        )
    low, high = _usd(t, "topup_min_usd", 5), _usd(t, "topup_max_usd", 1000)
    if high < low:
        raise ConfigError(f"[billing] topup_max_usd: must be at least topup_min_usd ({low}), got {high}")
    return BillingConfig(
        discount=discount,
        topup_min_usd=low,
        topup_max_usd=high,
        success_url=_url(t, "success_url"),
        cancel_url=_url(t, "cancel_url"),
        stripe_api_base=_url(t, "stripe_api_base"),
        livemode=_get(t, "billing", "livemode", bool, False),
        initial_credit_usd=_usd(t, "initial_credit_usd", 5, allow_zero=True),
        stripe_secret_key_env=_get(t, "billing", "stripe_secret_key_env", str, "STRIPE_SECRET_KEY"),
        stripe_webhook_secret_env=_get(t, "billing", "stripe_webhook_secret_env", str, "STRIPE_WEBHOOK_SECRET"),
    )


def default_public_url(host: str, port: int) -> str:
    """``[dashboard] public_url`` when the file sets none: http:// and the listen address."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _dashboard(t: dict[str, Any], server: ServerConfig) -> DashboardConfig:
    _check_keys(t, "dashboard", {"signup", "signup_credit_usd", "public_url"})
    signup = _get(t, "dashboard", "signup", str, "closed")
    if signup not in ("open", "closed"):
        raise ConfigError(f'[dashboard] signup: must be "open" or "closed", got {signup!r}')
    public_url = _get(t, "dashboard", "public_url", str, default_public_url(server.host, server.port)).rstrip("/")
    if not public_url.startswith(("http://", "https://")) or "?" in public_url or "#" in public_url:
        raise ConfigError(
            f'[dashboard] public_url: must be a base URL starting with https:// (or http://), got "{public_url}"'
        )
    credit = _usd(t, "signup_credit_usd", 0, allow_zero=True, where="dashboard")
    return DashboardConfig(signup=signup, signup_credit_usd=credit, public_url=public_url)


def _email(raw: dict[str, Any]) -> EmailConfig | None:
    if "email" not in raw:
        return None
    try:
        return parse_email(_table(raw, "email"))
    except EmailConfigError as exc:
        raise ConfigError(str(exc)) from None


def _url(t: dict[str, Any], key: str) -> str | None:
    value: str | None = _get(t, "billing", key, str, None)
    if value is not None and not value.startswith(("http://", "https://")):
        raise ConfigError(f'[billing] {key}: must start with https:// (or http://), got "{value}"')
    return value


def _provider(name: str, t: Any) -> ProviderConfig:
    where = f"providers.{name}"
    if not isinstance(t, dict):
        raise ConfigError(f"[{where}]: expected a table")
    _check_keys(t, where, {"protocol", "base_url", "api_key_env", "passthrough", "responses"})
    protocol = _require(t, where, "protocol", str)
    if protocol not in PROTOCOLS:
        raise ConfigError(f'[{where}] protocol: "{protocol}" is not one of {", ".join(PROTOCOLS)}')
    base_url = _require(t, where, "base_url", str).rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError(f'[{where}] base_url: must start with https:// (or http://), got "{base_url}"')
    passthrough = _get(t, where, "passthrough", bool, True)
    responses = _get(t, where, "responses", bool, False)
    if responses and protocol != "openai":
        raise ConfigError(f'[{where}] responses: only an openai provider serves the Responses API, not "{protocol}"')
    key_env = _require(t, where, "api_key_env", str)
    try:
        credential_name(key_env)  # a name that cannot be a variable is a mistake in the file
    except CredentialError as exc:
        raise ConfigError(f"[{where}] api_key_env: {exc}") from None
    try:
        key, problem = read_secret(key_env), ""
    except CredentialError as exc:  # the file exists but is unusable: the provider is disabled
        key, problem = None, str(exc)
    return ProviderConfig(name, protocol, base_url, key_env, passthrough, key, problem, responses)


def _model(name: str, t: Any, providers: dict[str, ProviderConfig]) -> ModelConfig:
    where = f'models."{name}"'
    if not isinstance(t, dict):
        raise ConfigError(f"[{where}]: expected a table")
    allowed = {"provider", "upstream_model", "input_price", "output_price", "cached_input_price"}
    _check_keys(t, where, allowed | {"max_output_tokens", "fallback", "context_length"})
    provider = _require(t, where, "provider", str)
    if provider not in providers:
        raise ConfigError(f'[{where}] provider: unknown provider "{provider}"; {_known(providers)}')
    input_price = _price(t, where, "input_price", None)
    fallback = _get(t, where, "fallback", list, [])
    if not all(isinstance(f, str) for f in fallback):
        raise ConfigError(f"[{where}] fallback: expected a list of model names")
    max_out = _get(t, where, "max_output_tokens", int, 32768)
    if max_out < 1:
        raise ConfigError(f"[{where}] max_output_tokens: must be 1 or more, got {max_out}")
    context = _get(t, where, "context_length", int, None)
    if context is not None and context < 1:
        raise ConfigError(f"[{where}] context_length: must be 1 or more, got {context}")
    return ModelConfig(
        name=name,
        provider=provider,
        upstream_model=_get(t, where, "upstream_model", str, name),
        input_price=input_price,
        output_price=_price(t, where, "output_price", None),
        cached_input_price=_price(t, where, "cached_input_price", input_price),
        max_output_tokens=max_out,
        fallback=tuple(fallback),
        context_length=context,
    )
