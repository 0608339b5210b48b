"""Configuration: frozen attrs classes, structured from TOML by one cattrs converter.

Every problem names the key path (``sources[1].channels[0]: ...``). Reload
builds a new Config and diffs it with the old one; nothing is mutated in place.
Secrets are named by environment variable (``api_key_env``) and read only
through :func:`resolve_secret`; they are never part of the Config object.
"""

from __future__ import annotations

import math
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs

from mdagent.db.dsn import dsn_problem, masked_dsn
from mdagent.errors import ConfigError
from mdagent.providers.registry import PROVIDERS, provider_for
from mdagent.text import storable_text


def _positive(_inst: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name}: must be > 0, got {value!r}")


def _non_negative(_inst: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name}: must be >= 0, got {value!r}")


def _positive_or_unset(_inst: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name}: must be > 0 when set, got {value!r}")


def _at_most(limit: int) -> Any:
    """A validator: the value (when set) is at most ``limit``."""

    def check(_inst: Any, attribute: attrs.Attribute[Any], value: int | None) -> None:
        if value is not None and value > limit:
            raise ValueError(f"{attribute.name}: must be <= {limit:,}, got {value!r}")

    return check


def max_workers() -> int:
    """The largest ``[agent] workers`` accepted here: 4 per core (os.cpu_count), at least 4.

    More worker processes than that only share the same cores: each costs a
    Python process's memory and its own database connections.
    """
    return 4 * max(1, os.cpu_count() or 1)


def _workers_in_range(_inst: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    limit = max_workers()
    if not 1 <= value <= limit:
        raise ValueError(
            f"{attribute.name}: must be 1 to {limit} (4 per core, {os.cpu_count()} cores"
            f" here), got {value!r}"
        )


# Day counts beyond these are typos; larger ones overflow date arithmetic
# (retention) or create one partition per day per table (partitions ahead).
MAX_RETENTION_DAYS = 36_500
MAX_PARTITIONS_AHEAD_DAYS = 366


# The per-stream activity rule runs about once a second (pipeline/stream.py)
# and cuts time into quiet_time_s / 10 slices: a shorter quiet time cannot be
# checked, and a denormal one made that slice 0.0 (ZeroDivisionError).
MIN_QUIET_TIME_S = 1.0


def _off_or_checkable(_inst: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value != 0 and not value >= MIN_QUIET_TIME_S:
        raise ValueError(
            f"{attribute.name}: must be 0 (off) or at least {MIN_QUIET_TIME_S:g} s, got {value!r}"
        )


@attrs.frozen
class OperatingRange:
    """The values an operator may configure for a number: ``low`` to ``high``
    (inclusive, in ``unit``), or 0 when ``off`` (0 disables the feature).

    Checked when a config is *read* (check-config, start, SIGHUP reload: all
    go through :func:`parse_config`), after the field's own validator (which
    holds what the code can run at all, > 0). A value the code could run but
    that makes the agent spin or hammer a venue (``max_connection_age_s =
    1e-9`` opened a connection a second) is refused here. Code that builds a
    Config itself (tests compressing time: a rotation every 3 s) is not held
    to it. ``why``: a short reason shown with the error, or "".
    """

    low: float
    high: float
    unit: str = "s"
    off: bool = False
    why: str = ""

    def problem(self, value: float) -> str | None:
        """None when ``value`` is in range, else "must be ..., got ..." (one line)."""
        if (self.off and value == 0) or self.low <= value <= self.high:
            return None
        span = f"{self.span()} {self.unit}".rstrip()
        if self.off:
            span = f"0 (off) or {span}"
        why = f" ({self.why})" if self.why else ""
        return f"must be {span}{why}, got {value!r}"

    def span(self) -> str:
        """``"60 to 604,800"``: the bounds as README's config reference shows them."""
        return f"{_shown(self.low)} to {_shown(self.high)}"


def _shown(number: float) -> str:
    return f"{int(number):,}" if number == int(number) else f"{number:g}"


_RANGE = "operating_range"


def _ranged(default: Any, low: float, high: float, validator: Any = None, **kw: Any) -> Any:
    """An attrs field with an :class:`OperatingRange` (``kw``: its unit, off, why)."""
    return attrs.field(
        default=default,
        validator=validator or _positive,
        metadata={_RANGE: OperatingRange(low, high, **kw)},
    )


_DAY_S = 86_400
# Binance allows 300 connection attempts per 5 minutes per IP (wire-formats.md
# 1.3): a connection replaced every 60 s leaves room for 60 connections.
_ROTATION_WHY = "a new connection each time; Binance allows 300 per 5 min per IP"


def _not_blank(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    # "" would be the current directory, not a path relative to the config file.
    if not value.strip():
        raise ValueError(f'{attribute.name}: must not be empty (e.g. "./mdagent-data")')


def _libpq_dsn(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    problem = dsn_problem(value)
    if problem:
        raise ValueError(f"{attribute.name}: {problem}")


# PostgreSQL settings of the embedded server ([database.embedded]), as
# (name, value text) pairs: hashable, in file order.
ServerSettings = tuple[tuple[str, str], ...]
_SETTING_NAME = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$")


@attrs.frozen
class AgentConfig:
    name: str = "mdagent"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    shutdown_grace_s: float = _ranged(10.0, 1, 3600)
    # One summary log line (rows, rates, latency, gaps, dead letters) this often.
    summary_interval_s: float = _ranged(60.0, 1, _DAY_S, why="one log line each time")
    # Each venue's instrument list is synced at start and then this often.
    # At least 10 min: listings change a few times a day, a sync costs REST
    # budget the backfill shares (Polygon's free tier: 5 requests a minute).
    instruments_every_s: float = _ranged(
        86_400.0, 600, 30 * _DAY_S, why="each sync spends the venue's REST budget"
    )
    # Worker processes running the stream -> normalizer -> writer pipeline,
    # each for its shard of the streams (mdagent/shards/); 1: this process
    # runs it. Changing it needs a restart.
    workers: int = attrs.field(default=1, validator=_workers_in_range)


@attrs.frozen
class DatabaseConfig:
    dsn: str = attrs.field(default="embedded", validator=_libpq_dsn)
    # Relative to the config file's directory when loaded from a file.
    data_dir: str = attrs.field(default="./mdagent-data", validator=_not_blank)
    # A batch is held in memory until committed.
    batch_max_rows: int = _ranged(5000, 1, 1_000_000, unit="rows")
    # Rows wait at most this long uncommitted (lost from memory by a crash).
    batch_max_delay_s: float = _ranged(0.1, 0.001, 60)
    retention_days: int | None = attrs.field(
        default=None, validator=[_positive_or_unset, _at_most(MAX_RETENTION_DAYS)]
    )
    partitions_ahead_days: int = attrs.field(
        default=3, validator=[_non_negative, _at_most(MAX_PARTITIONS_AHEAD_DAYS)]
    )
    # [database.embedded]: server settings written to postgresql.auto.conf
    # before the embedded server starts (ignored for an external dsn).
    embedded: ServerSettings = ()


@attrs.frozen
class HttpConfig:
    listen: str = "127.0.0.1:9108"
    enabled: bool = True

    def __attrs_post_init__(self) -> None:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"listen: expected 'host:port', got {self.listen!r}")

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


@attrs.frozen
class PipelineConfig:
    """Sizes and limits of the stages between streams and the writer."""

    # Bounded channel of raw frame batches from all streams to the normalizer.
    # Its memory bound is frames_channel_batches x frame_batch_max_bytes.
    frames_channel_batches: int = _ranged(16, 1, 1024, unit="batches")
    # Bounded channel of record batches from the normalizer to the writer.
    records_channel_batches: int = _ranged(4, 1, 1024, unit="batches")
    # Frames a stream collects before handing a batch on (or after frame_batch_delay_s).
    frame_batch_max: int = _ranged(512, 1, 65_536, unit="frames")
    frame_batch_max_bytes: int = _ranged(256 << 10, 1, 16 << 20, unit="bytes")
    # An idle connection wakes up this often: a tiny delay made it spin.
    frame_batch_delay_s: float = _ranged(0.02, 0.01, 10)
    # A stream blocked on a full channel this long stops reading; the missed
    # range is recorded as a gap instead of buffering without bound.
    backpressure_timeout_s: float = _ranged(60.0, 1, 3600)


@attrs.frozen
class SourceConfig:
    provider: str = attrs.field(validator=lambda _i, _a, name: _known_provider(name))
    symbols: tuple[str, ...]
    channels: tuple[str, ...]
    name: str = ""
    ws_url: str = ""
    rest_url: str = ""
    api_key_env: str | None = None
    archive_raw: bool = False
    backfill: bool = True
    # Sync the venue's instrument list and check these symbols against it
    # (needs the venue's REST API at rest_url).
    instruments: bool = True
    # PEM bundle of CAs to trust for wss:// (private CA, TLS-intercepting
    # proxy) instead of the system's; relative to the config file.
    ca_file: str = ""
    # No data for this long -> reconnect (the watchdog). 0 disables it.
    stale_after_s: float = _ranged(
        30.0, 1, _DAY_S, _non_negative, off=True, why="a reconnect each time"
    )
    # Reconnect backoff: initial, cap; reset after stable_after_s connected.
    reconnect_initial_s: float = _ranged(0.5, 0.01, 3600)
    # At least 0.5 s: fewer than 3 attempts a second at a venue that refuses.
    reconnect_max_s: float = _ranged(30.0, 0.5, 3600, why="the retry rate at a venue that is down")
    # At least 10 s: a venue that accepts and closes at once would otherwise
    # reset the backoff every time and be retried at reconnect_initial_s.
    stable_after_s: float = _ranged(60.0, 10, _DAY_S)
    # Reconnect before the provider's hard connection cap (Binance: 24 h).
    max_connection_age_s: float = _ranged(23.5 * 3600, 60, 7 * _DAY_S, why=_ROTATION_WHY)
    # A stream silent this long while the other streams of its source flow is
    # subscribed again, then its connection replaced (pipeline/streams.py). 0 disables.
    quiet_time_s: float = _ranged(120.0, MIN_QUIET_TIME_S, _DAY_S, _off_or_checkable, off=True)

    @property
    def key(self) -> str:
        """Stable identity of this source across reloads."""
        return self.name or f"{self.provider}:{','.join(self.symbols)}"

    def effective_ws_url(self) -> str:
        return self.ws_url or provider_for(self.provider).ws_url

    def effective_rest_url(self) -> str:
        return self.rest_url or provider_for(self.provider).rest_url

    def api_key(self) -> str | None:
        """The secret ``api_key_env`` names, read now (see :func:`resolve_secret`)."""
        return resolve_secret(self.api_key_env)


def _known_provider(name: str) -> None:
    if name not in PROVIDERS:
        # The wording cattrs gives a Literal, which this field was before the registry.
        raise ValueError(
            f"provider: invalid value {name!r}, expected one of {', '.join(PROVIDERS)}"
        )


@attrs.frozen
class Config:
    sources: tuple[SourceConfig, ...] = ()
    agent: AgentConfig = AgentConfig()
    database: DatabaseConfig = DatabaseConfig()
    http: HttpConfig = HttpConfig()
    pipeline: PipelineConfig = PipelineConfig()


_INT64_MAX = 2**63 - 1


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)

    # TOML has one number type per literal; accept an integer where a float is
    # expected, but never a bool or a string. TOML also spells nan and inf,
    # and its integers have no size limit: neither is a duration or a count.
    def _float(value: Any, _t: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        if isinstance(value, int) and abs(value) > _INT64_MAX:
            raise ValueError(
                f"expected a number of at most 19 digits, got {len(str(value))} digits"
            )
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value!r}")
        return float(value)

    def _int(value: Any, _t: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        if abs(value) > _INT64_MAX:
            raise ValueError(
                f"expected an integer of at most 19 digits, got {len(str(value))} digits"
            )
        return value

    def _str(value: Any, _t: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value

    def _bool(value: Any, _t: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value

    conv.register_structure_hook(float, _float)
    conv.register_structure_hook(int, _int)
    conv.register_structure_hook(str, _str)
    conv.register_structure_hook(bool, _bool)

    def _str_tuple(value: Any, _t: Any) -> tuple[str, ...]:
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected a list of strings, got {value!r}")
        return tuple(_str(v, str) for v in value)

    conv.register_structure_hook_func(lambda t: t == tuple[str, ...], _str_tuple)

    def _settings(value: Any, _t: Any) -> ServerSettings:
        if not isinstance(value, dict):
            raise ValueError(f"expected a table of server settings, got {value!r}")
        pairs = []
        for name, setting in value.items():
            if not _SETTING_NAME.match(name):
                raise ValueError(f"{name!r} is not a PostgreSQL setting name")
            if isinstance(setting, bool):
                text = "on" if setting else "off"
            elif isinstance(setting, int | float | str):
                text = str(setting)
            else:
                raise ValueError(f"{name}: expected a string, number or boolean, got {setting!r}")
            if any(ord(c) < 32 or ord(c) == 127 for c in text):
                # One line of postgresql.auto.conf each: a newline would split
                # it, and the server would refuse to start until hand-edited.
                raise ValueError(f"{name}: control characters (newline, tab, ...) are not allowed")
            pairs.append((name, text))
        return tuple(pairs)

    conv.register_structure_hook_func(lambda t: t == ServerSettings, _settings)
    conv.register_unstructure_hook_func(lambda t: t == ServerSettings, dict)
    return conv


CONVERTER = _make_converter()


def _validate_source(path: str, src: SourceConfig, *, secrets: bool = True) -> list[str]:
    problems: list[str] = []
    provider = PROVIDERS.get(src.provider)
    if provider is None:
        # The field validator names the unknown provider; the rest of this
        # source is judged by provider rules there are none of.
        return problems
    if not src.symbols:
        problems.append(f"{path}.symbols: at least one symbol is required")
    if not src.channels:
        problems.append(f"{path}.channels: at least one channel is required")
    for i, sym in enumerate(src.symbols):
        why = provider.symbols.problem(sym)
        if why is not None:
            problems.append(
                f"{path}.symbols[{i}]: invalid symbol {storable_text(sym, 60)!r} for provider"
                f" {src.provider}: {why}"
            )
    # Two spellings of one stream (Binance: BTCUSDT and btcusdt) are duplicates.
    names = [provider.symbols.same_as(s) for s in src.symbols]
    if len(set(names)) != len(names):
        problems.append(f"{path}.symbols: duplicate symbols")
    for i, ch in enumerate(src.channels):
        if provider.channel(ch) is None:
            problems.append(
                f"{path}.channels[{i}]: unknown channel {ch!r} for provider {src.provider}"
            )
    for url_key, url, schemes in (
        ("ws_url", src.ws_url, ("ws://", "wss://")),
        ("rest_url", src.rest_url, ("http://", "https://")),
    ):
        if url and not url.startswith(schemes):
            problems.append(f"{path}.{url_key}: expected a {' or '.join(schemes)} URL, got {url!r}")
    if provider.api_key_required and not src.api_key_env:
        problems.append(f"{path}.api_key_env: required for provider {src.provider}")
    elif secrets and src.api_key_env and not os.environ.get(src.api_key_env):
        problems.append(f"{path}.api_key_env: environment variable {src.api_key_env} is not set")
    elif secrets and src.api_key_env and not _API_KEY.fullmatch(os.environ[src.api_key_env]):
        # Never echo the value: it is the secret.
        problems.append(
            f"{path}.api_key_env: environment variable {src.api_key_env} holds whitespace"
            " or characters that are not printable ASCII (a trailing newline?)"
        )
    in_range = all(_in_range(src, name) for name in ("reconnect_initial_s", "reconnect_max_s"))
    if in_range and src.reconnect_max_s < src.reconnect_initial_s:
        problems.append(f"{path}.reconnect_max_s: must be >= reconnect_initial_s")
    return problems


def _in_range(obj: Any, name: str) -> bool:
    """Whether field ``name`` of ``obj`` is within its OperatingRange (a value
    outside has its own problem line: no second one comparing it)."""
    operating = attrs.fields_dict(type(obj))[name].metadata[_RANGE]
    return operating.problem(getattr(obj, name)) is None


# An API key is printable ASCII without spaces. A key read from a file keeps
# its trailing newline: the venue refused it, and httpx's error for the
# header quoted the whole key into the logs.
_API_KEY = re.compile(r"[!-~]+")


def _format_cattrs_error(exc: BaseException) -> list[str]:
    problems: list[str] = []
    for msg in cattrs.transform_error(exc, path="$", format_exception=_describe):
        problems.append(_tidy(msg))
    return problems


def _describe(exc: BaseException, type_: Any) -> str:
    """One readable phrase for one structuring failure."""
    if isinstance(exc, KeyError):
        return "required key missing"
    args = getattr(type_, "__args__", None)
    if args and getattr(type_, "__origin__", None) is Literal:
        value = getattr(exc, "args", [None])[0]
        value = str(value).split(" not in literal")[0]
        return f"invalid value {value!r}, expected one of {', '.join(map(str, args))}"
    if isinstance(exc, KeyError):
        return "required key missing"
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"extra fields found ({', '.join(sorted(exc.extra_fields))})"
    if isinstance(exc, ValueError | TypeError) and str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)


def _tidy(msg: str) -> str:
    # cattrs says "invalid value for type, expected int @ $.sources[1].x";
    # turn it into "sources[1].x: invalid value ..." so the key path leads.
    text, _, where = msg.rpartition(" @ ")
    if not text:
        return msg
    where = where.removeprefix("$").removeprefix(".")
    text = text.replace("extra fields found", "unknown key(s)")
    if text.startswith("unknown key(s) ("):
        # cattrs: "unknown key(s) (a, b)" on the parent path.
        keys = text[len("unknown key(s) (") : -1].split(", ")
        prefix = f"{where}." if where else ""
        return "; ".join(f"{prefix}{k}: unknown key" for k in keys)
    field = re.match(r"^(\w+): ", text)
    if field:  # an attrs validator names its own field
        where = f"{where}.{field.group(1)}" if where else field.group(1)
        text = text[field.end() :]
    return f"{where or '(top level)'}: {text}"


def parse_config(data: dict[str, Any], *, secrets: bool = True) -> Config:
    """Structure and validate a TOML document; raise ConfigError with every problem.

    Every problem of the document is reported in one run: field validators
    run after structuring (all of them, not the first per table), and when
    the document as a whole does not structure, each table and each source
    is structured on its own (a source's unknown keys set aside) so that its
    remaining problems still show. ``secrets=False`` does not require the
    variables named by ``api_key_env`` to be set (commands that only use the
    database: an operator's shell does not have the service's secrets).
    """
    problems = _shape_problems(data)
    if problems:
        # A section that is not a table (``agent = 5``, ``[sources]`` for
        # ``[[sources]]``): cattrs would only say "'int' object is not iterable".
        raise ConfigError(problems)
    with attrs.validators.disabled():
        try:
            config: Config | None = CONVERTER.structure(data, Config)
        except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
            config = None
            problems += _format_cattrs_error(exc)
    if config is not None:
        sections = [(name, getattr(config, name)) for name in _SECTIONS]
        sources = list(enumerate(config.sources))
    else:
        sections = _lenient_sections(data)
        sources = _lenient_sources(data)
    for name, section in sections:
        problems += _field_problems(name, section)
    keys = [s.key for _, s in sources]
    for i, src in sources:
        problems += _field_problems(f"sources[{i}]", src)
        problems += _validate_source(f"sources[{i}]", src, secrets=secrets)
        if keys.count(src.key) > 1:
            problems.append(
                f"sources[{i}].name: duplicate source {src.key!r} (give each source a name)"
            )
    if config is not None and not config.sources:
        problems.append("sources: at least one [[sources]] table is required")
    if config is not None and not problems:
        # Imported here: the shard rule reads the provider registry, like this module.
        from mdagent.shards.assign import ownership_problems

        problems += ownership_problems(config.sources, config.agent.workers)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
    assert config is not None
    return config


def _shape_problems(data: dict[str, Any]) -> list[str]:
    problems = [
        f"{name}: expected a table ([{name}]), got {type(data[name]).__name__} {data[name]!r}"
        for name in _SECTIONS
        if name in data and not isinstance(data[name], dict)
    ]
    sources = data.get("sources", [])
    if not isinstance(sources, list):
        problems.append(
            "sources: expected an array of tables ([[sources]], with two brackets),"
            f" got {'a table' if isinstance(sources, dict) else repr(sources)}"
        )
    else:
        problems += [
            f"sources[{i}]: expected a table, got {item!r}"
            for i, item in enumerate(sources)
            if not isinstance(item, dict)
        ]
    return problems


_SECTIONS = {
    "agent": AgentConfig,
    "database": DatabaseConfig,
    "http": HttpConfig,
    "pipeline": PipelineConfig,
}


def _field_problems(path: str, obj: Any) -> list[str]:
    """Every failing field validator of ``obj`` (not only the first), and every
    value outside its :class:`OperatingRange`, as ``path.field: ...``."""
    problems = []
    for field in attrs.fields(type(obj)):
        if field.validator is None:
            continue
        value = getattr(obj, field.name)
        try:
            field.validator(obj, field, value)
        except ValueError as exc:
            problems.append(f"{path}.{exc}")
            continue
        operating = field.metadata.get(_RANGE)
        problem = operating.problem(value) if operating is not None else None
        if problem:
            problems.append(f"{path}.{field.name}: {problem}")
    return problems


def _structure_quietly(value: Any, cls: type[Any]) -> Any:
    """``value`` as ``cls`` without validators; None when it does not structure."""
    with attrs.validators.disabled():
        try:
            return CONVERTER.structure(value, cls)
        except (cattrs.BaseValidationError, ValueError, TypeError):
            return None


def _lenient_sections(data: dict[str, Any]) -> list[tuple[str, Any]]:
    found = []
    for name, cls in _SECTIONS.items():
        value = data.get(name, {})
        section = _structure_quietly(value, cls) if isinstance(value, dict) else None
        if section is not None:
            found.append((name, section))
    return found


def _lenient_sources(data: dict[str, Any]) -> list[tuple[int, SourceConfig]]:
    raw = data.get("sources")
    if not isinstance(raw, list):
        return []
    known = {f.name for f in attrs.fields(SourceConfig)}
    found = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            continue
        src = _structure_quietly({k: v for k, v in item.items() if k in known}, SourceConfig)
        if src is not None:
            found.append((i, src))
    return found


def load_config(path: str | Path, *, secrets: bool = True) -> Config:
    """Read and validate a config file; raise ConfigError with every problem.

    Relative paths in the file (``database.data_dir``, ``sources[].ca_file``)
    are made absolute against the file's directory, so a command run from
    any directory finds the same embedded cluster.
    """
    path = Path(path)
    raw = _read_config_file(path)
    if raw.startswith(b"\xef\xbb\xbf"):
        # Windows editors add it; tomllib then says only "Invalid statement".
        raise ConfigError(
            [f"{path}: starts with a byte order mark (BOM): save it as UTF-8 without BOM"]
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            [f"{path}: line {line} is not UTF-8 (byte 0x{raw[exc.start]:02x})"]
        ) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from exc
    config = resolve_paths(parse_config(data, secrets=secrets), path.absolute().parent)
    problems = [
        f"sources[{i}].ca_file: cannot read {s.ca_file}"
        for i, s in enumerate(config.sources)
        if s.ca_file and not os.access(s.ca_file, os.R_OK)
    ]
    if problems:
        raise ConfigError(problems)
    return config


# The largest config file read. A real one is a few KB; thousands of symbols
# make a few hundred KB. Beyond that it is the wrong file (a log, a dump), and
# reading it whole would hold it all in memory, on every SIGHUP too.
MAX_CONFIG_BYTES = 1 << 20

_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _read_config_file(path: Path) -> bytes:
    """The bytes of the config file ``path``; ConfigError (one line) when it is
    missing or unreadable, not a regular file, or larger than MAX_CONFIG_BYTES.

    ``--config /dev/zero`` read for ever while memory grew, and a FIFO blocked
    until a writer came (at a SIGHUP, in the reload's thread, for good): the
    file is opened without blocking and checked before anything is read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror}"]) from exc
    too_large = ConfigError(
        [
            f"{path}: cannot read config file: larger than {MAX_CONFIG_BYTES:,} bytes (the wrong file?)"
        ]
    )
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "not a file")
            raise ConfigError(
                [f"{path}: cannot read config file: it is {kind}, not a regular file"]
            )
        if info.st_size > MAX_CONFIG_BYTES:
            raise too_large
        chunks = []
        left = MAX_CONFIG_BYTES + 1  # the file may grow meanwhile
        while left > 0 and (chunk := os.read(fd, left)):
            chunks.append(chunk)
            left -= len(chunk)
        raw = b"".join(chunks)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror}"]) from exc
    finally:
        os.close(fd)
    if len(raw) > MAX_CONFIG_BYTES:
        raise too_large
    return raw


def resolve_paths(config: Config, base: Path) -> Config:
    """``config`` with its relative file paths made absolute against ``base``."""

    def absolute(value: str) -> str:
        return str(base / Path(value).expanduser()) if value else value

    return attrs.evolve(
        config,
        database=attrs.evolve(config.database, data_dir=absolute(config.database.data_dir)),
        sources=tuple(attrs.evolve(s, ca_file=absolute(s.ca_file)) for s in config.sources),
    )


def resolve_secret(env_name: str | None) -> str | None:
    """Read a secret from the environment; the value never enters Config or logs."""
    if not env_name:
        return None
    return os.environ.get(env_name) or None


def config_to_display(config: Config) -> dict[str, Any]:
    """The effective config as plain data, secrets redacted."""
    data: dict[str, Any] = CONVERTER.unstructure(config)
    data["database"]["dsn"] = masked_dsn(config.database.dsn)
    for src_data, src in zip(data["sources"], config.sources, strict=True):
        src_data["ws_url"] = src.effective_ws_url()
        src_data["rest_url"] = src.effective_rest_url()
        if src.api_key_env:
            src_data["api_key"] = (
                "***set***" if resolve_secret(src.api_key_env) else "***missing***"
            )
    return data
