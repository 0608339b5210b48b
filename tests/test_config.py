"""Config: every bad input is rejected with a message naming the key path."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mdagent.config import (
    MAX_CONFIG_BYTES,
    AgentConfig,
    Config,
    DatabaseConfig,
    PipelineConfig,
    SourceConfig,
    config_to_display,
    load_config,
    parse_config,
)
from mdagent.db.dsn import masked_dsn
from mdagent.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

GOOD_SOURCE = {"provider": "binance", "symbols": ["BTCUSDT"], "channels": ["trade", "kline_1m"]}


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


def test_shipped_config_is_valid() -> None:
    config = load_config(REPO / "config.toml")
    assert isinstance(config, Config)
    assert config.database.dsn == "embedded"
    assert config.sources[0].provider == "binance"


def test_defaults_fill_missing_sections() -> None:
    config = parse_config({"sources": [GOOD_SOURCE]})
    assert config.agent.log_format == "json"
    assert config.http.port == 9108
    assert config.sources[0].effective_ws_url().startswith("wss://")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"sources": [GOOD_SOURCE], "databse": {}}, "databse: unknown key"),
        ({"sources": [{**GOOD_SOURCE, "chanels": ["trade"]}]}, "sources[0].chanels: unknown key"),
        (
            {
                "sources": [
                    GOOD_SOURCE,
                    {**GOOD_SOURCE, "name": "b", "channels": ["trade", "trdae"]},
                ]
            },
            "sources[1].channels[1]: unknown channel 'trdae' for provider binance",
        ),
        (
            {"sources": [{**GOOD_SOURCE, "provider": "bnance"}]},
            "sources[0].provider: invalid value 'bnance', expected one of binance, polygon",
        ),
        (
            {"sources": [GOOD_SOURCE], "database": {"batch_max_rows": -5}},
            "database.batch_max_rows: must be > 0, got -5",
        ),
        (
            {"sources": [GOOD_SOURCE], "database": {"batch_max_rows": "many"}},
            "database.batch_max_rows: expected an integer",
        ),
        (
            {"sources": [GOOD_SOURCE], "agent": {"shutdown_grace_s": True}},
            "agent.shutdown_grace_s: expected a number",
        ),
        (
            {"sources": [GOOD_SOURCE], "http": {"listen": "nowhere"}},
            "http.listen: expected 'host:port'",
        ),
        (
            {"sources": [{**GOOD_SOURCE, "symbols": []}]},
            "sources[0].symbols: at least one symbol is required",
        ),
        (
            {"sources": [{**GOOD_SOURCE, "ws_url": "http://x"}]},
            "sources[0].ws_url: expected a ws:// or wss:// URL",
        ),
        ({"sources": []}, "sources: at least one [[sources]] table is required"),
        (
            {"sources": [{"provider": "polygon", "symbols": ["AAPL"], "channels": ["T"]}]},
            "sources[0].api_key_env: required for provider polygon",
        ),
        (
            {
                "sources": [
                    {
                        "provider": "polygon",
                        "symbols": ["AAPL"],
                        "channels": ["trade"],
                        "api_key_env": "MDAGENT_TEST_UNSET_KEY",
                    }
                ]
            },
            "sources[0].channels[0]: unknown channel 'trade' for provider polygon",
        ),
        ({"sources": [GOOD_SOURCE, GOOD_SOURCE]}, "sources[1].name: duplicate source"),
        # A section of the wrong shape: was "'int' object is not iterable" /
        # "unknown error ('str' object has no attribute 'keys')".
        ({"sources": 5}, "sources: expected an array of tables ([[sources]], with two brackets)"),
        ({"sources": {"provider": "binance"}}, "sources: expected an array of tables"),
        ({"sources": [GOOD_SOURCE, "x"]}, "sources[1]: expected a table, got 'x'"),
        ({"sources": [GOOD_SOURCE], "agent": 5}, "agent: expected a table ([agent]), got int 5"),
    ],
)
def test_bad_config_names_key_path(data: dict[str, Any], expected: str) -> None:
    problems = problems_of(data)
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("agent", "summary_interval_s", float("nan"), "expected a finite number, got nan"),
        ("agent", "shutdown_grace_s", float("inf"), "expected a finite number, got inf"),
        ("pipeline", "backpressure_timeout_s", float("-inf"), "expected a finite number"),
        ("agent", "shutdown_grace_s", 10**400, "expected a number of at most 19 digits"),
        ("database", "batch_max_rows", 10**29, "expected an integer of at most 19 digits"),
        ("database", "retention_days", 99_999_999_999, "must be <= 36,500"),
        ("database", "partitions_ahead_days", 100_000, "must be <= 366"),
    ],
)
def test_numbers_a_running_agent_cannot_use(
    section: str, key: str, value: float, expected: str
) -> None:
    """TOML's nan/inf and its unbounded integers: a config error, not a crash later.

    Before, ``summary_interval_s = nan`` passed (also on SIGHUP) and the
    summary task died with a traceback at its next sleep, taking the agent
    down; a huge ``retention_days`` crashed maintenance with OverflowError.
    """
    problems = problems_of({"sources": [GOOD_SOURCE], section: {key: value}})
    assert problems == [f"{section}.{key}: {expected}"] or any(
        p.startswith(f"{section}.{key}: {expected}") for p in problems
    ), problems
    assert len(problems) == 1, problems


@pytest.mark.parametrize("value", [5e-324, 1e-9, 0.5])
def test_a_quiet_time_too_short_to_check_is_refused(value: float) -> None:
    """The activity rule cuts time into quiet_time_s / 10 slices: 5e-324 made
    that slice 0.0 and the normalizer died with ZeroDivisionError on the
    first record (traceback, agent down; also reachable by SIGHUP)."""
    source = {**GOOD_SOURCE, "quiet_time_s": value}
    problems = problems_of({"sources": [source]})
    assert problems == [
        f"sources[0].quiet_time_s: must be 0 (off) or at least 1 s, got {value!r}"
    ], problems


def _ranged_fields() -> list[tuple[str, str]]:
    """(section, key) of every number with an operating range, sources as "sources"."""
    found = []
    for section, cls in (
        ("agent", AgentConfig),
        ("database", DatabaseConfig),
        ("pipeline", PipelineConfig),
        ("sources", SourceConfig),
    ):
        found += [(section, f.name) for f in attrs.fields(cls) if "operating_range" in f.metadata]
    return found


# Every duration, interval and size of the config (not the day counts, which
# have their own bounds, nor ``workers``).
RANGED = [
    ("agent", "shutdown_grace_s"), ("agent", "summary_interval_s"),
    ("agent", "instruments_every_s"), ("database", "batch_max_rows"),
    ("database", "batch_max_delay_s"), ("pipeline", "frames_channel_batches"),
    ("pipeline", "records_channel_batches"), ("pipeline", "frame_batch_max"),
    ("pipeline", "frame_batch_max_bytes"), ("pipeline", "frame_batch_delay_s"),
    ("pipeline", "backpressure_timeout_s"), ("sources", "stale_after_s"),
    ("sources", "reconnect_initial_s"), ("sources", "reconnect_max_s"),
    ("sources", "stable_after_s"), ("sources", "max_connection_age_s"),
    ("sources", "quiet_time_s"),
]  # fmt: skip


def test_the_numbers_the_agent_runs_on_all_have_a_range() -> None:
    assert _ranged_fields() == RANGED


@pytest.mark.parametrize(("section", "key"), RANGED)
@pytest.mark.parametrize("value", [1e-300, 5e-324, 1e-9, 1e308, 2**63 - 1])
def test_absurd_but_finite_numbers_are_refused_in_one_line(
    section: str, key: str, value: float
) -> None:
    """Tiny values made the agent spin or hammer a venue: ``max_connection_age_s
    = 1e-9`` opened a new connection every second, ``instruments_every_s`` spent
    the REST budget on listings, ``summary_interval_s`` flooded the log; huge
    ones meant "never" (or a channel bound of 2**63). All were accepted."""
    field = {f.name: f for f in attrs.fields(_SECTION_CLASSES[section])}[key]
    if isinstance(field.default, int) and isinstance(value, float):
        return  # a float for an integer is refused by type, tested elsewhere
    if section == "sources":
        data: dict[str, Any] = {"sources": [{**GOOD_SOURCE, key: value}]}
        where = f"sources[0].{key}"
    else:
        data = {"sources": [GOOD_SOURCE], section: {key: value}}
        where = f"{section}.{key}"
    problems = problems_of(data)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{where}: must be "), problems
    shown = value if isinstance(field.default, int) else float(value)
    assert problems[0].endswith(f", got {shown!r}"), problems


_SECTION_CLASSES = {
    "agent": AgentConfig,
    "database": DatabaseConfig,
    "pipeline": PipelineConfig,
    "sources": SourceConfig,
}


def test_the_defaults_and_both_ends_of_each_range_are_accepted() -> None:
    for section, key in RANGED:
        field = {f.name: f for f in attrs.fields(_SECTION_CLASSES[section])}[key]
        operating = field.metadata["operating_range"]
        for value in (field.default, operating.low, operating.high):
            value = int(value) if isinstance(field.default, int) else value
            if section == "sources":
                # reconnect_initial_s at its top is above the default reconnect_max_s.
                source = {**GOOD_SOURCE, "reconnect_max_s": 3600, key: value}
                parse_config({"sources": [source]})
            else:
                parse_config({"sources": [GOOD_SOURCE], section: {key: value}})


def test_a_huge_symbol_is_named_not_echoed_whole() -> None:
    """A 10,000-character symbol was echoed whole into its one-line error."""
    source = {**GOOD_SOURCE, "symbols": ["A" * 10_000]}
    (problem,) = problems_of({"sources": [source]})
    assert problem.endswith("for provider binance: expected 1 to 40 characters, got 10000")
    assert len(problem) < 200


def test_quiet_time_off_or_from_one_second() -> None:
    for value in (0, 1, 1.5, 120):
        config = parse_config({"sources": [{**GOOD_SOURCE, "quiet_time_s": value}]})
        assert config.sources[0].quiet_time_s == value


def test_a_byte_order_mark_or_bad_utf8_is_named(tmp_path: Path) -> None:
    """Windows editors save UTF-8 with a BOM: tomllib says only "Invalid
    statement (at line 1, column 1)"; bad bytes were a codec message with a
    byte offset. Both now say what is wrong and where."""
    body = '[[sources]]\nprovider = "binance"\nsymbols = ["BTCUSDT"]\nchannels = ["trade"]\n'
    cfg = tmp_path / "c.toml"
    cfg.write_bytes(b"\xef\xbb\xbf" + body.encode())
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert info.value.problems == [
        f"{cfg}: starts with a byte order mark (BOM): save it as UTF-8 without BOM"
    ]
    cfg.write_bytes(body.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert info.value.problems == [f"{cfg}: line 5 is not UTF-8 (byte 0xe9)"]


def test_a_config_file_that_is_no_file_or_too_large(tmp_path: Path) -> None:
    """A directory, a device or a file over 1 MiB (the wrong file: a log, a
    dump) is named as such in one line; before, a 2 MB file of NULs was read
    whole and reported as invalid TOML, /dev/null as a config without sources."""
    big = tmp_path / "big.toml"
    big.write_bytes(b"# " + b"x" * MAX_CONFIG_BYTES + b"\n")
    for path, problem in (
        (tmp_path, "it is a directory, not a regular file"),
        (Path("/dev/null"), "it is a character device, not a regular file"),
        (big, "larger than 1,048,576 bytes (the wrong file?)"),
        (tmp_path / "missing.toml", "No such file or directory"),
    ):
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert info.value.problems == [f"{path}: cannot read config file: {problem}"]
    body = '[[sources]]\nprovider = "binance"\nsymbols = ["BTCUSDT"]\nchannels = ["trade"]\n'
    big.write_text(body + "#" * (MAX_CONFIG_BYTES - len(body) - 1) + "\n")
    assert load_config(big).sources[0].symbols == ("BTCUSDT",)  # exactly the limit: read


def test_nan_in_a_file_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[agent]\nsummary_interval_s = nan\n[[sources]]\nprovider = "binance"\n'
        'symbols = ["BTCUSDT"]\nchannels = ["trade"]\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert info.value.problems == ["agent.summary_interval_s: expected a finite number, got nan"]


@pytest.mark.parametrize("value", ["4MB'\nfsync = 'off", "4MB\r", "4\x00MB", "a\tb"])
def test_embedded_setting_with_a_control_character_is_refused(value: str) -> None:
    """Each setting is one line of postgresql.auto.conf: a newline used to be
    written as is, the server refused the file, and removing the setting from
    the config did not help (the line without mdagent's mark stayed)."""
    problems = problems_of(
        {"sources": [GOOD_SOURCE], "database": {"embedded": {"work_mem": value}}}
    )
    assert problems == [
        "database.embedded.work_mem: control characters (newline, tab, ...) are not allowed"
    ], problems


def test_missing_api_key_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MDAGENT_TEST_POLYGON_KEY", raising=False)
    src = {
        "provider": "polygon",
        "symbols": ["AAPL"],
        "channels": ["T"],
        "api_key_env": "MDAGENT_TEST_POLYGON_KEY",
    }
    problems = problems_of({"sources": [src]})
    assert problems == [
        "sources[0].api_key_env: environment variable MDAGENT_TEST_POLYGON_KEY is not set"
    ]
    monkeypatch.setenv("MDAGENT_TEST_POLYGON_KEY", "s3cret-value")
    config = parse_config({"sources": [src]})
    shown = repr(config_to_display(config))
    assert "s3cret-value" not in shown and "***set***" in shown


@pytest.mark.parametrize(
    "value", ["s3cret-key\n", "s3cret-key ", " s3cret-key", "s3cret\tkey", "s3cr\u00e9t"]
)
def test_an_api_key_with_whitespace_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """A key read from a file keeps its trailing newline (docker env files,
    Kubernetes secrets): the venue refused it ("authentication failed"), and
    httpx's error for the header, logged by the instruments sync, quoted the
    whole key (``Illegal header value b'Bearer s3cret-key\\n'``)."""
    monkeypatch.setenv("MDAGENT_TEST_POLYGON_KEY", value)
    src = {
        "provider": "polygon",
        "symbols": ["AAPL"],
        "channels": ["T"],
        "api_key_env": "MDAGENT_TEST_POLYGON_KEY",
    }
    problems = problems_of({"sources": [src]})
    assert problems == [
        "sources[0].api_key_env: environment variable MDAGENT_TEST_POLYGON_KEY holds"
        " whitespace or characters that are not printable ASCII (a trailing newline?)"
    ]
    assert "s3cr" not in repr(problems)


def test_every_problem_reported_at_once() -> None:
    problems = problems_of(
        {
            "agent": {"log_level": "loud"},
            "sources": [
                {"provider": "binance", "symbols": ["BTCUSDT"], "channels": ["trade"], "bogus": 1}
            ],
            "extra": 1,
        }
    )
    assert len(problems) == 3, problems


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[agent\nname=1")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "invalid TOML" in info.value.problems[0]


def test_password_redacted() -> None:
    assert "hunter2" not in masked_dsn("postgresql://u:hunter2@db:5432/md")
    assert "***" in masked_dsn("postgresql://u:hunter2@db:5432/md")
    assert "hunter2" not in masked_dsn("host=db password=hunter2 dbname=md")
    assert masked_dsn("postgresql://u@db/md") == "postgresql://u@db/md"


def test_ssl_key_password_redacted() -> None:
    """libpq's sslpassword (the client key's passphrase) is a secret too: it was
    shown whole by check-config, status, dsn and migrate."""
    for dsn in (
        "postgresql://u@db/md?sslpassword=hunter2",
        "host=db sslpassword=hunter2 password=pw2 dbname=md",
    ):
        masked = masked_dsn(dsn)
        assert "hunter2" not in masked and "pw2" not in masked, masked
        assert "sslpassword=***" in masked and "dbname=md" in masked, masked


def test_quoted_keyword_password_masked_whole() -> None:
    """A quoted value with spaces is one value: none of it may show."""
    masked = masked_dsn("host=db password='my secret pw' dbname=md")
    assert "secret" not in masked and " pw" not in masked
    assert "password=***" in masked and "dbname=md" in masked


@given(
    st.dictionaries(
        st.sampled_from(["agent", "database", "http", "pipeline", "sources", "junk"]),
        st.one_of(
            st.integers(),
            st.text(),
            st.lists(st.integers()),
            st.dictionaries(st.text(), st.integers()),
        ),
    )
)
def test_arbitrary_documents_never_crash(data: dict[str, Any]) -> None:
    """Any TOML-shaped garbage yields a Config or a ConfigError, never another exception."""
    try:
        parse_config(data)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)


def test_example_in_readme_parses() -> None:
    """The README's config reference example must stay a valid config."""
    text = (REPO / "README.md").read_text()
    block = text.split("```toml", 1)[1].split("```", 1)[0]
    data = tomllib.loads(block)
    for src in data.get("sources", []):
        src.pop("api_key_env", None)
    data["sources"] = [s for s in data["sources"] if s["provider"] == "binance"]
    parse_config(data)


def test_readme_states_each_range() -> None:
    """The config reference shows each operating range on the key's line (or the next two)."""
    block = (REPO / "README.md").read_text().split("```toml", 1)[1].split("```", 1)[0]
    lines = block.splitlines()
    for section, key in RANGED:
        field = {f.name: f for f in attrs.fields(_SECTION_CLASSES[section])}[key]
        span = field.metadata["operating_range"].span()
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{key} ="))
        assert span in " ".join(lines[at : at + 3]), (key, span)
