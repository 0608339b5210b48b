"""deploy/mdagent.service says what the agent does (Type=notify, reload, limits, secrets).

``systemd-analyze verify`` and ``security`` are run by hand on a machine
with systemd (figures in README "Deployment"); this test keeps the unit and
the agent's behaviour in step.
"""

from __future__ import annotations

from tests.test_cli import REPO


def unit() -> dict[str, list[str]]:
    # Repeated keys (SystemCallFilter=) all count, as in systemd.
    values: dict[str, list[str]] = {}
    for line in (REPO / "deploy" / "mdagent.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_unit_matches_the_agent() -> None:
    u = unit()
    assert u["Type"] == ["notify"]
    assert u["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert u["Restart"] == ["on-failure"]
    assert int(u["LimitNOFILE"][0]) >= 65536
    assert u["StateDirectory"] == ["mdagent"]
    assert u["EnvironmentFile"] == ["-/etc/mdagent/env"]
    assert u["KillMode"] == ["mixed"]  # the agent stops its own PostgreSQL after draining
    assert "--config /etc/mdagent/config.toml" in u["ExecStart"][0]
    assert int(u["TimeoutStopSec"][0]) > 10 + 5  # shutdown_grace_s + the server's stop
    for key in ("DynamicUser", "NoNewPrivileges", "PrivateTmp", "MemoryDenyWriteExecute"):
        assert u[key] == ["yes"], key
    assert u["ProtectSystem"] == ["strict"]
    assert "@system-service" in u["SystemCallFilter"]
    assert u["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert u["Environment"][0].startswith("SHIV_ROOT=/var/cache/")
    assert u["CacheDirectory"] == ["mdagent"]
