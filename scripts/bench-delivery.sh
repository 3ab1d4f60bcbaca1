#!/usr/bin/env bash
# End-to-end delivery benchmark (docs/BENCHMARKS.md, "End to end: campaign delivery").
#
# Sends a campaign of ~10 KB personalized messages (scripts/bench/gen_campaign.py) into
# postfix smtp-sink on 127.0.0.1 and reports messages/s next to postfix's own client
# (smtp-source -d -s 8, same size) measured against the same sink right before each run:
#
#   sqlite-send     `marketing send` on a fresh SQLite file (its in-process task processor)
#   pg-send         `marketing send` on a fresh PostgreSQL database
#   pg-workers      `marketing task-repo` + `marketing api` + 2 `marketing worker` processes on
#                   a fresh PostgreSQL database: the campaign is created, given its recipients
#                   (CSV) and sent through the HTTP API, the workers deliver
#   sqlite-send-1m  `marketing send` with 1,000,000 recipients (for peak RSS; only with
#                   BENCH_FULL=1 or --full)
#
# messages/s is the campaign's own: sent / (completed_at - started_at), as `marketing send
# --json` reports it (import excluded). Peak RSS and CPU come from /usr/bin/time -v; every run
# checks that the sink counted exactly one message per recipient, and fails otherwise.
#
# Usage: scripts/bench-delivery.sh [--full] [MODE...]
# Knobs (environment):
#   BENCH_RECIPIENTS=100000   recipients of the 100k rows
#   BENCH_FULL=1              also run sqlite-send-1m (takes several minutes)
#   BENCH_CEILING_MESSAGES=50000   messages smtp-source sends for the ceiling
#   BENCH_PG_URL=postgres://postgres@127.0.0.1:5432   server for the PostgreSQL rows
#   BENCH_PERF=1              perf record -F 499 -g the delivering process of each send row
#                             (and one worker); prints the grouped profile
#   BENCH_KEEP=1              keep the work directory (logs, SQLite files, perf data; the
#                             PostgreSQL databases are always dropped)
#   BENCH_PG_STATS=1          for the PostgreSQL rows, print what the database did per message
#                             (statements, rows, WAL bytes by table group, from
#                             pg_stat_statements and pg_stat_wal: scripts/bench/pg_stats.py);
#                             the server must preload pg_stat_statements and serve nothing else
#                             (docs/SCALING.md)
#   SMTP_CONNECTIONS, MAX_IN_FLIGHT, WORKER_TASKS, MAX_BATCH_SIZE   passed through to marketing
#   MARKETING_BIN=PATH        measure this binary instead of building the work tree's (to
#                             compare two builds in one run)
# Needs root (smtp-sink drops to `nobody` with -u), postfix (smtp-sink, smtp-source),
# python3, curl, /usr/bin/time, and psql/createdb/dropdb for the PostgreSQL rows.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
    echo "bench-delivery: FAILED: $*" >&2
    exit 1
}
say() { printf '==> %s\n' "$*" >&2; }

N=${BENCH_RECIPIENTS:-100000}
FULL=${BENCH_FULL:-0}
CEILING_MESSAGES=${BENCH_CEILING_MESSAGES:-50000}
PG_BASE=${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}
MODES=()
for arg in "$@"; do
    case "$arg" in
        --full) FULL=1 ;;
        sqlite-send | pg-send | pg-workers | sqlite-send-1m) MODES+=("$arg") ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown argument $arg (modes: sqlite-send pg-send pg-workers sqlite-send-1m; --full)" ;;
    esac
done
if [ ${#MODES[@]} -eq 0 ]; then
    MODES=(sqlite-send pg-send pg-workers)
    [ "$FULL" = 1 ] && MODES+=(sqlite-send-1m)
fi
[[ "$N" =~ ^[1-9][0-9]*$ ]] || die "BENCH_RECIPIENTS must be a positive whole number, not ${N@Q}"

# --- what the runs need: fail loudly, install nothing ------------------------------------
[ "$(id -u)" = 0 ] || die "run as root: smtp-sink needs root to switch to -u nobody"
for tool in /usr/sbin/smtp-sink /usr/sbin/smtp-source /usr/bin/time; do
    [ -x "$tool" ] || die "$tool is missing (Debian: postfix, time)"
done
for tool in cargo python3 curl; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done
needs_pg=0
for mode in "${MODES[@]}"; do [[ "$mode" == pg-* ]] && needs_pg=1; done
if [ "$needs_pg" = 1 ]; then
    for tool in psql createdb dropdb; do
        command -v "$tool" >/dev/null || die "$tool is missing (Debian: postgresql-client)"
    done
    psql "$PG_BASE/postgres" -Atqc 'SELECT 1' >/dev/null 2>&1 \
        || die "PostgreSQL is not reachable at $PG_BASE (start it: pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start)"
fi
if [ "${BENCH_PERF:-0}" = 1 ]; then
    command -v perf >/dev/null || die "BENCH_PERF=1 needs perf"
fi

# --- cleanup: every process this script starts, every database it creates ------------------
WORK=$(mktemp -d /tmp/bench-delivery.XXXXXX)
PIDS=()      # process groups (each started with setsid)
DATABASES=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 50); do
            kill -0 -- "-$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    for db in "${DATABASES[@]}"; do
        dropdb --if-exists --force -h "$(pg_host)" -p "$(pg_port)" -U "$(pg_user)" "$db" 2>/dev/null \
            || echo "bench-delivery: could not drop database $db" >&2
    done
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "bench-delivery: work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts "$@" in its own session (so the whole group can be signalled) with output to $LOG;
# sets STARTED to its pid.
spawn() {
    setsid "$@" </dev/null >"$LOG" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
}
forget() { # pid: remove from PIDS once it has exited
    local keep=() pid
    for pid in "${PIDS[@]}"; do [ "$pid" = "$1" ] || keep+=("$pid"); done
    PIDS=("${keep[@]}")
}
# The child of a `/usr/bin/time` (the measured process itself).
child_of() {
    local child=""
    for _ in $(seq 1 100); do
        child=$(cat "/proc/$1/task/$1/children" 2>/dev/null | awk '{print $1}')
        [ -n "$child" ] && break
        sleep 0.05
    done
    [ -n "$child" ] || die "process $1 has no child"
    echo "$child"
}

pg_field() { python3 -c 'import sys, urllib.parse as u; p = u.urlparse(sys.argv[1]); print(getattr(p, sys.argv[2]) or sys.argv[3])' "$PG_BASE" "$1" "$2"; }
pg_host() { pg_field hostname 127.0.0.1; }
pg_port() { pg_field port 5432; }
pg_user() { pg_field username postgres; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_http() { # url what
    for _ in $(seq 1 200); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    die "$2 did not answer at $1"
}
wait_port() { # port what log
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    die "$2 did not listen on 127.0.0.1:$1: $(tail -n 5 "$3" 2>/dev/null)"
}
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# smtp-sink -c writes `sess=N quit=N mesg=N` records, each ended by a carriage return; the last
# complete one is the current count.
sink_messages() {
    tail -c 512 "$1" | python3 -c '
import re, sys
data = sys.stdin.read()
end = data.rfind("\r")
found = re.findall(r"sess=\d+ quit=\d+ mesg=(\d+)", data[:end] if end >= 0 else "")
print(found[-1] if found else 0)'
}
# Waits until the sink has counted `want` messages (the sink may trail its client by a moment);
# prints the count it settled on.
sink_wait() { # log want
    local count=0 last=-1 same=0
    for _ in $(seq 1 200); do
        count=$(sink_messages "$1")
        [ "$count" = "$2" ] && break
        if [ "$count" = "$last" ]; then same=$((same + 1)); else same=0; fi
        [ "$same" -ge 20 ] && break
        last=$count
        sleep 0.1
    done
    echo "$count"
}

# Starts a fresh smtp-sink; sets SINK_PORT, SINK_LOG, SINK_PID.
start_sink() { # name
    SINK_PORT=$(free_port)
    SINK_LOG="$WORK/$1.sink.log"
    LOG=$SINK_LOG spawn /usr/sbin/smtp-sink -u nobody -c "127.0.0.1:$SINK_PORT" 2000
    SINK_PID=$STARTED
    wait_port "$SINK_PORT" smtp-sink "$SINK_LOG"
}
stop_sink() {
    kill -TERM -- "-$SINK_PID" 2>/dev/null || true
    wait "$SINK_PID" 2>/dev/null || true
    forget "$SINK_PID"
}

# The ceiling: postfix's own client, sessions kept open (-d), 8 sessions, same message size.
# Sets CEILING (messages/s). Each row measures it right before and right after its send and
# takes the higher (`ceilings`): on these shared machines the ceiling moves by a third from one
# minute to the next, and the higher one is the stricter figure to be a fraction of.
measure_ceiling() {
    local before after start end
    before=$(sink_messages "$SINK_LOG")
    start=$(date +%s.%N)
    /usr/sbin/smtp-source -d -s 8 -m "$CEILING_MESSAGES" -l 10240 "127.0.0.1:$SINK_PORT" \
        || die "smtp-source failed"
    end=$(date +%s.%N)
    after=$(sink_wait "$SINK_LOG" $((before + CEILING_MESSAGES)))
    [ $((after - before)) = "$CEILING_MESSAGES" ] \
        || die "smtp-sink counted $((after - before)) of smtp-source's $CEILING_MESSAGES messages"
    CEILING=$(python3 -c "print(round($CEILING_MESSAGES / ($end - $start)))")
    say "ceiling: smtp-source -d -s 8 -m $CEILING_MESSAGES -l 10240: $CEILING msg/s"
}

# The ceiling again after a send; sets CEILINGS to "before/after" (the row's ceiling field).
ceilings() { # ceiling measured before the send
    measure_ceiling
    CEILINGS="$1/$CEILING"
}

# Reads a /usr/bin/time -v file: prints "peak_rss_kb cpu_seconds context_switches".
time_stats() {
    python3 - "$1" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
def field(name):
    match = re.search(r"\s*" + re.escape(name) + r": (\S+)", text)
    if not match:
        sys.exit(f"{sys.argv[1]}: no '{name}' (did /usr/bin/time finish?)")
    return float(match[1])
print(int(field("Maximum resident set size (kbytes)")),
      round(field("User time (seconds)") + field("System time (seconds)"), 2),
      int(field("Voluntary context switches") + field("Involuntary context switches")))
EOF
}

# perf on a running process until it exits; sets PERF_PID.
start_perf() { # pid name
    PERF_DATA="$WORK/$2.perf.data"
    LOG="$WORK/$2.perf.log" spawn perf record -F 499 -g -o "$PERF_DATA" -p "$1"
    PERF_PID=$STARTED
}
finish_perf() {
    kill -INT -- "-$PERF_PID" 2>/dev/null || true
    wait "$PERF_PID" 2>/dev/null || true
    forget "$PERF_PID"
    say "profile $PERF_DATA (perf report -i $PERF_DATA --no-children):"
    python3 scripts/bench/perf_groups.py "$PERF_DATA" --top 4 >&2 || true
}

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
record_row() { # store mode messages rate ceiling rss_kb cpu_s
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "$7" "$(loadavg)" >>"$RESULTS"
}

# Waits until the log of `marketing send` says its task processor started (the import is done).
wait_for_line() { # log pattern pid
    for _ in $(seq 1 6000); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# --- build and generate ----------------------------------------------------------------
if [ -n "${MARKETING_BIN:-}" ]; then
    BIN=$MARKETING_BIN
else
    say "building: cargo build --release -p marketing"
    cargo build --release -p marketing >&2 || die "the release build failed"
    TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    BIN="$TARGET_DIR/release/marketing"
fi
[ -x "$BIN" ] || die "$BIN is missing after the build"

CONNECTIONS=${SMTP_CONNECTIONS:-8}
export SMTP_CONNECTIONS=$CONNECTIONS
# Each row names its connections, and MAX_IN_FLIGHT when it is set.
SMTP_LABEL="$CONNECTIONS conn"
if [ -n "${MAX_IN_FLIGHT:-}" ]; then
    export MAX_IN_FLIGHT
    SMTP_LABEL="$SMTP_LABEL, $MAX_IN_FLIGHT in flight"
fi
# One secret for every process, so no two processes race to create one in a fresh database.
export TRACKING_SECRET="bench-delivery-tracking-secret-0123456789abcdef"
export RUST_LOG=${RUST_LOG:-info}
unset DATABASE_URL SMTP_URL TASK_REPO_URL OUTBOX_DIR 2>/dev/null || true

generate() { # recipients -> sets CSV
    CSV="$WORK/recipients-$1.csv"
    [ -f "$CSV" ] && return 0
    say "generating $1 recipients"
    python3 scripts/bench/gen_campaign.py --recipients "$1" --campaign "$WORK/campaign.json" --csv "$CSV" \
        || die "the generator failed"
}

# --- the rows -------------------------------------------------------------------------
# `marketing send` on DATABASE_URL; records one row.
run_send() { # store mode recipients database_url
    local store=$1 mode=$2 n=$3 url=$4 name=$2 pid child summary rate stats count
    generate "$n"
    start_sink "$name"
    measure_ceiling
    local before
    before=$(sink_messages "$SINK_LOG")
    say "$name: marketing send, $n recipients, SMTP: $SMTP_LABEL, load $(loadavg)"
    [[ "$url" == postgres* ]] && pg_stats_reset
    LOG="$WORK/$name.err" spawn env DATABASE_URL="$url" SMTP_URL="smtp://127.0.0.1:$SINK_PORT?tls=none" \
        /usr/bin/time -v -o "$WORK/$name.time" \
        sh -c 'exec "$0" send "$1" --recipients "$2" --json >"$3"' \
        "$BIN" "$WORK/campaign.json" "$CSV" "$WORK/$name.json"
    pid=$STARTED
    if [ "${BENCH_PERF:-0}" = 1 ]; then
        child=$(child_of "$pid")
        wait_for_line "$WORK/$name.err" "task processor started" "$child" \
            || die "$name: marketing send did not start sending: $(tail -n 5 "$WORK/$name.err")"
        start_perf "$child" "$name"
    fi
    wait "$pid" || die "$name: marketing send failed: $(tail -n 20 "$WORK/$name.err")"
    forget "$pid"
    [ "${BENCH_PERF:-0}" = 1 ] && finish_perf
    summary=$(python3 - "$WORK/$name.json" "$n" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
n = int(sys.argv[2])
sent = s["deliveries"]["sent"]
if s["status"] != "completed" or sent != n:
    sys.exit(f"campaign {s['status']}: sent {sent} of {n}: {s['deliveries']}")
print(sent, round(s["messages_per_second"]), round(s["elapsed_seconds"], 2))
EOF
    ) || die "$name: $summary"
    read -r sent rate elapsed <<<"$summary"
    count=$(sink_wait "$SINK_LOG" $((before + n)))
    [ $((count - before)) = "$n" ] || die "$name: smtp-sink counted $((count - before)) messages for $n recipients"
    stats=$(time_stats "$WORK/$name.time") || die "$name: $stats"
    read -r rss cpu switches <<<"$stats"
    say "$name: $sent sent in $elapsed s = $rate msg/s; sink counted $((count - before)); peak RSS $((rss / 1024)) MiB; CPU $cpu s; $((switches / n)) context switches per message"
    ceilings "$CEILING"
    record_row "$store" "send, $SMTP_LABEL" "$sent" "$rate" "$CEILINGS" "$rss" "$cpu"
    [[ "$url" == postgres* ]] && pg_stats_report "${url##*/}" "$n" "$name (per message sent)"
    stop_sink
}

# BENCH_PG_STATS=1: the database's work over one row (scripts/bench/pg_stats.py), kept in
# $WORK/pgstats-*.md and printed after the table.
pg_stats_reset() {
    [ "${BENCH_PG_STATS:-0}" = 1 ] || return 0
    python3 scripts/bench/pg_stats.py reset "$PG_BASE" || die "BENCH_PG_STATS=1: pg_stat_statements is not available at $PG_BASE"
}
pg_stats_report() { # database units label
    [ "${BENCH_PG_STATS:-0}" = 1 ] || return 0
    python3 scripts/bench/pg_stats.py report "$PG_BASE" "$1" "$2" "$3" >"$WORK/pgstats-$1.md" \
        || die "reading pg_stat_statements failed"
}

new_database() { # suffix -> sets DB_URL
    local db="bench_$$_$1"
    createdb -h "$(pg_host)" -p "$(pg_port)" -U "$(pg_user)" "$db" || die "createdb $db failed"
    DATABASES+=("$db")
    DB_URL="$PG_BASE/$db"
}

# task-repo + api + 2 workers on PostgreSQL; the campaign goes through the HTTP API.
run_workers() {
    local name=pg-workers n=$N workers=2 i
    generate "$n"
    new_database workers
    local url=$DB_URL
    DATABASE_URL=$url "$BIN" migrate >"$WORK/$name.migrate.log" 2>&1 || die "migrate failed: $(cat "$WORK/$name.migrate.log")"
    local key
    key=$(DATABASE_URL=$url "$BIN" api-key create --name bench 2>>"$WORK/$name.migrate.log") || die "api-key create failed"
    local token=bench-task-repo-token repo_port api_port
    repo_port=$(free_port)
    api_port=$(free_port)
    LOG="$WORK/$name.task-repo.log" spawn env DATABASE_URL="$url" TASK_REPO_BIND="127.0.0.1:$repo_port" \
        TASK_REPO_TOKEN=$token /usr/bin/time -v -o "$WORK/$name.task-repo.time" "$BIN" task-repo
    local repo_pid=$STARTED
    wait_http "http://127.0.0.1:$repo_port/health" "marketing task-repo"
    LOG="$WORK/$name.api.log" spawn env DATABASE_URL="$url" API_BIND="127.0.0.1:$api_port" \
        TASK_REPO_URL="http://127.0.0.1:$repo_port" TASK_REPO_TOKEN=$token "$BIN" api
    local api_pid=$STARTED
    wait_http "http://127.0.0.1:$api_port/health" "marketing api"

    start_sink "$name"
    measure_ceiling
    local before
    before=$(sink_messages "$SINK_LOG")
    local worker_pids=()
    for i in $(seq 1 "$workers"); do
        LOG="$WORK/$name.worker$i.log" spawn env DATABASE_URL="$url" TASK_REPO_URL="http://127.0.0.1:$repo_port" \
            TASK_REPO_TOKEN=$token TASK_CHECK_INTERVAL=0.2 WORKER_ID="bench-worker-$i" METRICS_BIND=127.0.0.1:0 \
            SMTP_URL="smtp://127.0.0.1:$SINK_PORT?tls=none" \
            /usr/bin/time -v -o "$WORK/$name.worker$i.time" "$BIN" worker
        worker_pids+=("$STARTED")
    done
    for i in $(seq 1 "$workers"); do
        wait_for_line "$WORK/$name.worker$i.log" "task processor started" "${worker_pids[$((i - 1))]}" \
            || die "worker $i did not start: $(tail -n 5 "$WORK/$name.worker$i.log")"
    done
    if [ "${BENCH_PERF:-0}" = 1 ]; then
        local child
        child=$(child_of "${worker_pids[0]}")
        start_perf "$child" "$name-worker1"
    fi

    local api="http://127.0.0.1:$api_port/api/v1" auth="Authorization: Bearer $key" id
    say "$name: creating the campaign and importing $n recipients through the API"
    pg_stats_reset
    id=$(curl -fsS -H "$auth" -H 'Content-Type: application/json' --data-binary "@$WORK/campaign.json" "$api/campaigns" \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["campaign"]["id"])') || die "POST /campaigns failed"
    curl -fsS -o "$WORK/$name.import.json" -H "$auth" -H 'Content-Type: text/csv' --data-binary "@$CSV" \
        "$api/campaigns/$id/recipients" || die "POST /campaigns/$id/recipients failed"
    say "$name: POST /campaigns/$id/send; $workers workers, SMTP: $SMTP_LABEL each, load $(loadavg)"
    curl -fsS -o /dev/null -X POST -H "$auth" "$api/campaigns/$id/send" || die "POST /campaigns/$id/send failed"
    local status="" deadline=$((SECONDS + 600 + n / 100))
    while [ $SECONDS -lt $deadline ]; do
        curl -fsS -o "$WORK/$name.status.json" -H "$auth" "$api/campaigns/$id/status" || die "GET status failed"
        status=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["status"])' "$WORK/$name.status.json")
        case "$status" in completed | failed | cancelled) break ;; esac
        sleep 0.5
    done
    [ "$status" = completed ] || die "$name: the campaign is $status: $(cat "$WORK/$name.status.json")"
    local summary sent rate elapsed
    summary=$(python3 - "$WORK/$name.status.json" "$n" <<'EOF'
import json, sys, datetime
s = json.load(open(sys.argv[1]))
n = int(sys.argv[2])
sent = s["deliveries"]["sent"]
if sent != n:
    sys.exit(f"sent {sent} of {n}: {s['deliveries']}")
parse = lambda t: datetime.datetime.fromisoformat(t.replace("Z", "+00:00"))
elapsed = (parse(s["completed_at"]) - parse(s["started_at"])).total_seconds()
print(sent, round(sent / elapsed), round(elapsed, 2))
EOF
    ) || die "$name: $summary"
    read -r sent rate elapsed <<<"$summary"
    # Stop the workers gracefully (SIGINT: /usr/bin/time ignores it and reports when the worker
    # exits), then the services.
    for pid in "${worker_pids[@]}"; do kill -INT -- "-$pid" 2>/dev/null || true; done
    for pid in "${worker_pids[@]}"; do
        wait "$pid" || die "a worker exited with an error: see $WORK/$name.worker*.log"
        forget "$pid"
    done
    [ "${BENCH_PERF:-0}" = 1 ] && finish_perf
    kill -INT -- "-$repo_pid" 2>/dev/null || true
    kill -TERM -- "-$api_pid" 2>/dev/null || true
    wait "$repo_pid" 2>/dev/null || true
    wait "$api_pid" 2>/dev/null || true
    forget "$repo_pid"
    forget "$api_pid"
    local count
    count=$(sink_wait "$SINK_LOG" $((before + n)))
    [ $((count - before)) = "$n" ] || die "$name: smtp-sink counted $((count - before)) messages for $n recipients"
    local rss=0 cpu=0 r c stats
    for i in $(seq 1 "$workers"); do
        stats=$(time_stats "$WORK/$name.worker$i.time") || die "worker $i: $stats"
        read -r r c _ <<<"$stats"
        [ "$r" -gt "$rss" ] && rss=$r
        cpu=$(python3 -c "print(round($cpu + $c, 2))")
        say "$name: worker $i: peak RSS $((r / 1024)) MiB, CPU $c s"
    done
    stats=$(time_stats "$WORK/$name.task-repo.time") || die "task-repo: $stats"
    read -r r c _ <<<"$stats"
    say "$name: task-repo: peak RSS $((r / 1024)) MiB, CPU $c s"
    say "$name: $sent sent in $elapsed s = $rate msg/s; sink counted $((count - before))"
    ceilings "$CEILING"
    record_row PostgreSQL "api + task-repo + $workers workers, $SMTP_LABEL each" "$sent" "$rate" "$CEILINGS" "$rss" "$cpu"
    pg_stats_report "${url##*/}" "$n" "$name (per message sent)"
    stop_sink
}

say "machine: nproc $(nproc), $(lscpu | sed -n 's/^Model name: *//p'), load $(loadavg)"
say "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates Cargo.toml Cargo.lock || echo ' + uncommitted changes in crates/'), $(date -u +%Y-%m-%dT%H:%MZ)"
for mode in "${MODES[@]}"; do
    case "$mode" in
        sqlite-send) run_send SQLite sqlite-send "$N" "sqlite://$WORK/sqlite-send.db" ;;
        sqlite-send-1m) run_send SQLite sqlite-send-1m 1000000 "sqlite://$WORK/sqlite-send-1m.db" ;;
        pg-send)
            new_database send
            run_send PostgreSQL pg-send "$N" "$DB_URL"
            ;;
        pg-workers) run_workers ;;
    esac
done

# --- the table --------------------------------------------------------------------------
echo
echo "| store | mode | messages | msg/s | ceiling msg/s, before / after | ratio to the higher | peak RSS MiB | CPU s (user+sys) | CPU µs/msg | load avg after |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
while IFS=$'\t' read -r store mode messages rate ceiling rss cpu load; do
    python3 - "$store" "$mode" "$messages" "$rate" "$ceiling" "$rss" "$cpu" "$load" <<'EOF'
import sys
store, mode, messages, rate, ceiling, rss, cpu, load = sys.argv[1:]
messages, rate, rss, cpu = int(messages), int(rate), int(rss), float(cpu)
ceilings = [int(c) for c in ceiling.split("/")]
print(f"| {store} | {mode} | {messages:,} | {rate:,} | {' / '.join(f'{c:,}' for c in ceilings)} | "
      f"{rate / max(ceilings):.2f} | "
      f"{rss / 1024:.1f} | {cpu:.1f} | {cpu / messages * 1e6:.0f} | {load} |")
EOF
done <"$RESULTS"
if [ "${BENCH_PG_STATS:-0}" = 1 ]; then
    for report in "$WORK"/pgstats-*.md; do
        if [ -e "$report" ]; then cat "$report"; fi
    done
fi
