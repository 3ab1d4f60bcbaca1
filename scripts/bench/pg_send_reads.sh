#!/usr/bin/env bash
# One `marketing send` on a fresh PostgreSQL database into postfix smtp-sink, and what the
# server did for it: index scans of `campaigns` per message (the per-message status reads, plus
# one foreign-key check per imported recipient) and the server's CPU per message (every
# process of the `postgres` user and the backends it has reaped, from /proc: import included,
# other clients' work too, so run it on a quiet server), beside the client's own CPU per message.
#
# Usage: scripts/bench/pg_send_reads.sh BINARY [RECIPIENTS]    (default 20000)
# Env:   BENCH_PG_URL (default postgres://postgres@127.0.0.1:5432), SMTP_CONNECTIONS (default 8)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$1
N=${2:-20000}
PG=${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}
WORK=$(mktemp -d /tmp/pg-send-reads.XXXXXX)
SINK_PID=
DB="send_reads_$$"
cleanup() {
    [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null
    psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
python3 scripts/bench/gen_campaign.py --recipients "$N" --campaign "$WORK/campaign.json" --csv "$WORK/r.csv"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
/usr/sbin/smtp-sink -u nobody -c "127.0.0.1:$PORT" 1000 >"$WORK/sink.log" 2>&1 &
SINK_PID=$!
psql -q "$PG/postgres" -c "CREATE DATABASE $DB"
server_ticks() {
    for pid in $(pgrep -u postgres); do
        awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat" 2>/dev/null || true
    done | awk '{s += $1} END {print s + 0}'
}
before=$(server_ticks)
TRACKING_SECRET=pg-send-reads-tracking-secret-0123456789abcdef RUST_LOG=warn \
    DATABASE_URL="$PG/$DB?sslmode=disable" SMTP_URL="smtp://127.0.0.1:$PORT?tls=none" \
    /usr/bin/time -f "%U %S" -o "$WORK/time" "$BIN" send "$WORK/campaign.json" --recipients "$WORK/r.csv" --json >"$WORK/out.json"
after=$(server_ticks)
scans=$(psql -At "$PG/$DB" -c "SELECT idx_scan FROM pg_stat_user_tables WHERE relname = 'campaigns'")
python3 - "$WORK/out.json" "$WORK/time" "$N" "$scans" "$before" "$after" "$(getconf CLK_TCK)" <<'PY'
import json, sys
out, times, n, scans, before, after, hz = sys.argv[1:]
s = json.load(open(out))
n = int(n)
if s["status"] != "completed" or s["deliveries"]["sent"] != n:
    sys.exit(f"campaign {s['status']}: {s['deliveries']}")
user, system = map(float, open(times).read().split())
print(f"sent {n}, {s['messages_per_second']:.0f} msg/s; campaigns index scans per message "
      f"{int(scans) / n:.3f}; server CPU {(int(after) - int(before)) / int(hz) / n * 1e6:.0f} µs/msg; "
      f"client CPU {(user + system) / n * 1e6:.0f} µs/msg")
PY
