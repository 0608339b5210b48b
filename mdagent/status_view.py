"""Drawing ``collect_status()`` data as tables (rich), or printing it as JSON."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mdagent.config import Config
from mdagent.status import collect_status


def print_status(config: Config, *, as_json: bool = False) -> int:
    """The `mdagent status` command: tables on stdout (or one JSON object); exit code 0."""
    data = collect_status(config)
    if as_json:
        print(json.dumps(data, indent=2))
        return 0
    console = Console()
    for table in render(data):
        console.print(table)
    return 0


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def render(data: dict[str, Any]) -> list[Table | str]:
    """The tables of one status, in reading order (strings for one-line notes)."""
    out: list[Table | str] = []
    agent = data["agent"]
    if agent is None and data.get("agent_note"):
        out.append(f"agent: {data['agent_note']}; database only")
    elif agent is None:
        out.append("agent: not reachable (not running, or http disabled); database only")
    else:
        streams = Table(title=f"streams (agent, {agent['url']})", title_justify="left")
        for column in ("source", "connected", "last event", "events/s", "frames"):
            streams.add_column(column, justify="left" if column == "source" else "right")
        for s in agent["streams"]:
            streams.add_row(
                s["source"],
                "yes" if s["connected"] else "[bold red]no[/]",
                _age(s["last_event_age_s"]),
                f"{s['events_per_s']:,.1f}",
                f"{s['frames_total']:,}",
            )
        out.append(streams)
        per_stream = Table(title="streams per symbol (agent)", title_justify="left")
        for column in ("provider", "symbol", "channel", "state", "last event", "events/s"):
            per_stream.add_column(column, justify="right" if column == "events/s" else "left")
        for s in agent.get("per_stream", []):
            state = s["state"]
            per_stream.add_row(
                s["provider"],
                s["symbol"],
                s["channel"],
                state if state in ("ok", "quiet") else f"[bold red]{state}[/]",
                _age(s["last_receive_age_s"]),
                f"{s['events_per_s']:,.1f}",
            )
        out.append(per_stream)
        out.extend(f"not ready: {problem}" for problem in agent.get("problems", []))

    offsets = Table(title="offsets (stream_offsets)", title_justify="left")
    for column in ("provider", "symbol", "channel", "last offset", "last event (UTC)", "committed"):
        offsets.add_column(column)
    for o in data["offsets"]:
        offsets.add_row(
            o["provider"],
            o["symbol"],
            o["channel"],
            "-" if o["last_seq"] is None else str(o["last_seq"]),
            o["last_event"] or "-",
            _age(o["committed_ago_s"]) + " ago",
        )
    out.append(offsets)

    tables = Table(title="stored data", title_justify="left")
    for column in ("table", "rows", "from", "to"):
        tables.add_column(column, justify="right" if column == "rows" else "left")
    for t in data["tables"]:
        rows = f"{t['rows']:,}" if t["exact"] else f"~{t['rows']:,}"
        tables.add_row(t["table"], rows, t["from"] or "-", t["to"] or "-")
    out.append(tables)

    gaps = Table(title="open gaps (fetch_jobs)", title_justify="left")
    for column in ("kind", "reason", "open", "oldest"):
        gaps.add_column(column)
    for g in data["gaps"]:
        gaps.add_row(g["kind"], g["reason"], str(g["open"]), _age(g["oldest_age_s"]))
    out.append(gaps if data["gaps"] else "open gaps: none")

    queue = data["queue"]
    out.append("backfill queue: " + ", ".join(f"{state} {n}" for state, n in queue.items()))
    if data.get("not_filled"):
        lost = Table(title="jobs that ended without their data", title_justify="left")
        for column in ("job", "stream", "range", "status", "attempts", "reason"):
            lost.add_column(column)
        for j in data["not_filled"]:
            lost.add_row(
                str(j["id"]),
                j["stream"],
                j["range"],
                j["status"],
                str(j["attempts"]),
                j["error"] or "-",
            )
        out.append(lost)
    for problem in data.get("instruments", []):
        out.append(f"[bold red]instrument:[/] {escape(problem)}")
    dead = data["dead_letters"]
    out.append(f"dead letters: {dead['last_hour']} in the last hour, {dead['total']} in all")
    return out
