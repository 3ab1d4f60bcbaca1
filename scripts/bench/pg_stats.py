#!/usr/bin/env python3
"""The database cost of a benchmark run on PostgreSQL (docs/SCALING.md).

    pg_stats.py reset SERVER_URL
    pg_stats.py report SERVER_URL DATABASE UNITS LABEL [JSON_OUT]

`reset` clears pg_stat_statements and the cluster's WAL counters (pg_stat_wal); `report` reads
them back for one database and prints, per group of statements (by the table they touch), the
calls, rows and WAL bytes per unit (per message sent, per tracking event stored), then the
statements that cost the most, and the cluster's WAL totals (records, full-page images, bytes)
over the same window. The server needs `shared_preload_libraries = 'pg_stat_statements'`
and `CREATE EXTENSION pg_stat_statements` in its `postgres` database; the cluster should serve
nothing but the benchmark while it runs, since pg_stat_wal counts the whole cluster.

`reset` also notes the CPU time of the server's processes (the postmaster, its live children
— backends, checkpointer, WAL writer, autovacuum — and the children it has reaped), read from
/proc, so `report` gives the database's whole CPU per unit, protocol work included, which
statement timings leave out. That part needs the server on this machine.

Only psql is used (no Python driver to install).
"""
import json
import os
import re
import subprocess
import sys
import tempfile

# The table a statement touches first names its group; order matters where one statement names
# two tables (a recipients UPDATE joining campaigns is a recipients statement).
GROUPS = [
    ("task repository (tasks)", r"\btasks\b"),
    ("recipients (import, outcomes, batch reads)", r"\brecipients\b"),
    ("tracking events", r"\btracking_events\b"),
    ("webhook outbox", r"\bwebhook_outbox\b"),
    ("suppressions & feedback", r"\b(suppressions|feedback_events)\b"),
    ("campaigns", r"\bcampaigns\b"),
]
OTHER = "other (transactions, migrations, health, settings)"


def psql(server, database, sql):
    out = subprocess.run(
        ["psql", f"{server}/{database}", "-X", "-At", "-F", "\t", "-c", sql],
        check=True,
        capture_output=True,
        text=True,
    )
    return [line.split("\t") for line in out.stdout.splitlines() if line]


def cpu_file(server):
    port = re.sub(r"\W", "_", server)
    return os.path.join(tempfile.gettempdir(), f"pg_stats_cpu_{port}")


def server_cpu_seconds(server):
    """User + system CPU of the postmaster and all its children, live or reaped."""
    data_dir = psql(server, "postgres", "SHOW data_directory")[0][0]
    with open(os.path.join(data_dir, "postmaster.pid")) as pid_file:
        postmaster = int(pid_file.readline())
    ticks = os.sysconf("SC_CLK_TCK")

    def stat(pid):
        with open(f"/proc/{pid}/stat") as f:
            # Fields after the command name (which may hold spaces) start at field 3.
            return f.read().rsplit(")", 1)[1].split()

    fields = stat(postmaster)
    # utime, stime, cutime, cstime are fields 14-17 (1-based): indexes 11-14 here.
    total = sum(int(v) for v in fields[11:15])
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = stat(entry)
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def reset(server):
    psql(server, "postgres", "SELECT pg_stat_statements_reset()")
    psql(server, "postgres", "SELECT pg_stat_reset_shared('wal')")
    with open(cpu_file(server), "w") as f:
        f.write(str(server_cpu_seconds(server)))


def group_of(query):
    for name, pattern in GROUPS:
        if re.search(pattern, query, re.IGNORECASE):
            return name
    return OTHER


def report(server, database, units, label, json_out=None):
    units = int(units)
    rows = psql(
        server,
        "postgres",
        "SELECT s.calls, s.rows, s.wal_bytes, s.wal_records, s.wal_fpi, s.total_exec_time, "
        "regexp_replace(s.query, '\\s+', ' ', 'g') "
        "FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
        f"WHERE d.datname = '{database}'",
    )
    wal = psql(server, "postgres", "SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal")[0]
    with open(cpu_file(server)) as f:
        cpu_seconds = server_cpu_seconds(server) - float(f.read())
    groups = {}
    statements = []
    for calls, nrows, wal_bytes, wal_records, wal_fpi, exec_ms, query in rows:
        calls, nrows, wal_bytes = int(calls), int(nrows), int(wal_bytes)
        exec_ms = float(exec_ms)
        g = groups.setdefault(group_of(query), [0, 0, 0, 0.0])
        g[0] += calls
        g[1] += nrows
        g[2] += wal_bytes
        g[3] += exec_ms
        statements.append((wal_bytes, calls, nrows, exec_ms, query))
    total = [sum(g[i] for g in groups.values()) for i in range(4)]
    print(f"\n### {label}: {units:,} units, database {database}\n")
    print("| group | calls/unit | rows/unit | WAL bytes/unit | exec ms/1,000 units |")
    print("|---|---:|---:|---:|---:|")
    for name, (calls, nrows, wal_bytes, exec_ms) in sorted(
        groups.items(), key=lambda item: -item[1][2]
    ):
        print(
            f"| {name} | {calls / units:.3f} | {nrows / units:.3f} | {wal_bytes / units:,.0f} "
            f"| {exec_ms / units * 1000:,.1f} |"
        )
    print(
        f"| **all statements** | {total[0] / units:.3f} | {total[1] / units:.3f} "
        f"| {total[2] / units:,.0f} | {total[3] / units * 1000:,.1f} |"
    )
    wal_records, wal_fpi, wal_bytes = (int(v) for v in wal)
    print(
        f"\ncluster WAL over the run (pg_stat_wal): {wal_records / units:.2f} records, "
        f"{wal_fpi / units:.3f} full-page images, {wal_bytes / units:,.0f} bytes per unit "
        f"({wal_bytes / 2**20:,.1f} MiB in all)"
    )
    print(
        f"server CPU over the run (postmaster and its processes, /proc): {cpu_seconds:.2f} s, "
        f"{cpu_seconds / units * 1e6:,.0f} µs per unit\n"
    )
    print("statements by WAL bytes (top 8):\n")
    print("| calls | rows | WAL bytes | exec ms | statement |")
    print("|---:|---:|---:|---:|---|")
    for wal_bytes_s, calls, nrows, exec_ms, query in sorted(statements, reverse=True)[:8]:
        text = query if len(query) <= 110 else query[:107] + "..."
        print(f"| {calls:,} | {nrows:,} | {wal_bytes_s:,} | {exec_ms:,.0f} | `{text}` |")
    if json_out:
        with open(json_out, "w") as out:
            json.dump(
                {
                    "label": label,
                    "units": units,
                    "groups": groups,
                    "wal": {"records": wal_records, "fpi": wal_fpi, "bytes": wal_bytes},
                    "server_cpu_seconds": cpu_seconds,
                },
                out,
            )


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "reset":
        reset(sys.argv[2])
    elif len(sys.argv) >= 6 and sys.argv[1] == "report":
        report(*sys.argv[2:7])
    else:
        sys.exit(__doc__)
