#!/usr/bin/env bash
# Tracking endpoints benchmark (docs/BENCHMARKS.md, "Tracking endpoints").
#
# Starts `marketing serve` (release build) on a fresh SQLite file with the outbox transport,
# sends the sample campaign to BENCH_RECIPIENTS recipients through the API, takes the open
# pixel and click URLs out of the delivered .eml files (as a mail client would see them), and
# drives them with wrk on loopback:
#
#   pixel   GET /t/o/{token}  (every recipient's pixel, round-robin)
#   click   GET /t/c/{token}  (every recipient's first link, round-robin; 302 not followed)
#
# Each run then checks that nothing was lost: the campaign report's opens/clicks total must
# equal the requests wrk completed (polled until the event writer has stored them).
#
# Usage: scripts/bench-tracking.sh
# Knobs (environment):
#   BENCH_RECIPIENTS=1000   recipients (distinct URLs per run)
#   BENCH_DURATION=10s      wrk -d
#   BENCH_CONNECTIONS=64    wrk -c
#   BENCH_THREADS=2         wrk -t
#   BENCH_KEEP=1            keep the work directory
#   MARKETING_BIN=PATH      use this binary instead of building the release one
#   BENCH_PG_URL=postgres://postgres@127.0.0.1:5433
#                           serve on a fresh PostgreSQL database on that server instead of
#                           SQLite (dropped at the end)
#   BENCH_PG_STATS=1        with BENCH_PG_URL: print what the database did per stored event
#                           (scripts/bench/pg_stats.py; the server must preload
#                           pg_stat_statements and serve nothing else; docs/SCALING.md)
# Needs cargo, wrk (Debian: wrk), curl, jq, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
    echo "bench-tracking: FAILED: $*" >&2
    exit 1
}
say() { printf '==> %s\n' "$*" >&2; }

N=${BENCH_RECIPIENTS:-1000}
DURATION=${BENCH_DURATION:-10s}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
THREADS=${BENCH_THREADS:-2}
[[ "$N" =~ ^[1-9][0-9]*$ ]] || die "BENCH_RECIPIENTS must be a positive whole number, not ${N@Q}"
case "${1:-}" in
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    "") ;;
    *) die "unknown argument $1 (no arguments; see --help)" ;;
esac
for tool in cargo wrk curl jq python3; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done

WORK=$(mktemp -d /tmp/bench-tracking.XXXXXX)
SERVER=""
PG_DATABASE=""
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$SERVER" ]; then
        kill -TERM -- "-$SERVER" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 -- "-$SERVER" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$SERVER" 2>/dev/null || true
    fi
    if [ -n "$PG_DATABASE" ]; then
        psql "$BENCH_PG_URL/postgres" -X -qc "DROP DATABASE IF EXISTS $PG_DATABASE WITH (FORCE)" >/dev/null 2>&1 || true
    fi
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "bench-tracking: work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -n "${MARKETING_BIN:-}" ]; then
    BIN=$MARKETING_BIN
else
    say "building marketing (release)"
    cargo build --release -q -p marketing
    BIN="${CARGO_TARGET_DIR:-target}/release/marketing"
fi
[ -x "$BIN" ] || die "$BIN was not built"

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"
if [ -n "${BENCH_PG_URL:-}" ]; then
    PG_DATABASE="bench_tracking_$$"
    psql "$BENCH_PG_URL/postgres" -X -qc "CREATE DATABASE $PG_DATABASE" >/dev/null \
        || die "cannot create a database on $BENCH_PG_URL"
    export DATABASE_URL="$BENCH_PG_URL/$PG_DATABASE"
else
    export DATABASE_URL="sqlite://$WORK/bench.db"
fi
export OUTBOX_DIR="$WORK/outbox"
export API_BIND="127.0.0.1:$PORT"
export PUBLIC_BASE_URL="$BASE"
export TRACKING_SECRET="bench-tracking-secret-of-at-least-32-bytes"
export API_RATE_LIMIT=0
export RUST_LOG=warn
unset SMTP_URL

KEY=$("$BIN" api-key create --name bench 2>/dev/null)
setsid "$BIN" serve </dev/null >"$WORK/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 200); do
    curl -fsS -o /dev/null "$BASE/health" 2>/dev/null && break
    sleep 0.1
done
curl -fsS -o /dev/null "$BASE/health" || die "marketing serve did not start (log: $WORK/serve.log)"

say "sending the sample campaign to $N recipients (outbox)"
python3 - "$N" >"$WORK/campaign.json" <<'PY'
import json, sys
n = int(sys.argv[1])
campaign = json.load(open("examples/sample_campaign.json"))
campaign["recipients"] = [
    {"email": f"reader{i}@bench.example", "first_name": f"Reader{i}"} for i in range(n)
]
json.dump(campaign, sys.stdout)
PY
api() { curl -fsS -H "authorization: Bearer $KEY" -H 'content-type: application/json' "$@"; }
ID=$(api -X POST --data-binary @"$WORK/campaign.json" "$BASE/api/v1/campaigns" | jq -r .campaign.id)
api -X POST -d '{}' "$BASE/api/v1/campaigns/$ID/send" >/dev/null
for _ in $(seq 1 600); do
    STATUS=$(api "$BASE/api/v1/campaigns/$ID/status" | jq -r .status)
    [ "$STATUS" = completed ] && break
    sleep 0.1
done
[ "$STATUS" = completed ] || die "the campaign did not complete (status $STATUS)"

# The URLs as delivered: the pixel and the first tracked link of every message.
python3 - "$OUTBOX_DIR/$ID" "$BASE" "$WORK" <<'PY'
import email, email.policy, pathlib, re, sys
outbox, base, work = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
pixels, clicks = [], []
for path in sorted(outbox.glob("*.eml")):
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    html = message.get_body(("html",)).get_content()
    pixels.append(re.search(r'<img src="' + re.escape(base) + r'(/t/o/[^"]+)"', html).group(1))
    clicks.append(re.search(r'<a href="' + re.escape(base) + r'(/t/c/[^"]+)"', html).group(1))
for name, paths in (("pixel", pixels), ("click", clicks)):
    (work / f"{name}.paths").write_text("\n".join(paths) + "\n")
print(len(pixels), file=sys.stderr)
PY

# wrk: round-robin over the file's paths; the summary prints completed requests and non-2xx/3xx.
cat >"$WORK/paths.lua" <<'LUA'
local paths = {}
for line in io.lines(os.getenv("PATHS_FILE")) do paths[#paths + 1] = line end
local i = 0
request = function()
    i = i % #paths + 1
    return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
    io.write(string.format("BENCH requests=%d errors=%d non2xx3xx=%d p50_ms=%.2f p99_ms=%.2f\n",
        summary.requests,
        summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
        summary.errors.status, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
LUA

report_total() { # kind: opens|clicks
    api "$BASE/api/v1/campaigns/$ID/analytics" | jq -r ".$1.total"
}

printf '\n%-6s %12s %10s %10s %10s %12s\n' endpoint "requests/s" requests "p50 ms" "p99 ms" "stored"
for endpoint in pixel click; do
    kind=$([ "$endpoint" = pixel ] && echo opens || echo clicks)
    before=$(report_total "$kind")
    [ "${BENCH_PG_STATS:-0}" = 1 ] && python3 scripts/bench/pg_stats.py reset "$BENCH_PG_URL"
    out=$(PATHS_FILE="$WORK/$endpoint.paths" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" \
        -s "$WORK/paths.lua" "$BASE")
    echo "$out" >"$WORK/wrk-$endpoint.txt"
    rps=$(echo "$out" | awk '/^Requests\/sec/ {print $2}')
    line=$(echo "$out" | grep '^BENCH')
    requests=$(echo "$line" | sed -E 's/.*requests=([0-9]+).*/\1/')
    bad=$(echo "$line" | sed -E 's/.*non2xx3xx=([0-9]+).*/\1/')
    p50=$(echo "$line" | sed -E 's/.*p50_ms=([0-9.]+).*/\1/')
    p99=$(echo "$line" | sed -E 's/.*p99_ms=([0-9.]+).*/\1/')
    [ "$bad" = 0 ] || die "$endpoint: $bad responses were not 200/302"
    # Requests wrk cut off at the deadline may not have been answered, so the stored count
    # may only exceed the completed count by the connections in flight, never fall short.
    stored=0
    for _ in $(seq 1 300); do
        stored=$(( $(report_total "$kind") - before ))
        [ "$stored" -ge "$requests" ] && break
        sleep 0.1
    done
    [ "$stored" -ge "$requests" ] && [ "$stored" -le $((requests + CONNECTIONS)) ] \
        || die "$endpoint: wrk completed $requests requests, $stored events were stored"
    printf '%-6s %12s %10s %10s %10s %12s\n' "$endpoint" "$rps" "$requests" "$p50" "$p99" "$stored"
    if [ "${BENCH_PG_STATS:-0}" = 1 ]; then
        python3 scripts/bench/pg_stats.py report "$BENCH_PG_URL" "$PG_DATABASE" "$stored" \
            "$endpoint (per stored event)" >>"$WORK/pgstats.md"
    fi
done
if [ -e "$WORK/pgstats.md" ]; then cat "$WORK/pgstats.md"; fi
echo
echo "nproc: $(nproc); CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
