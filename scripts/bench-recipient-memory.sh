#!/usr/bin/env bash
# Peak RSS of `marketing send` while it reads and stores N recipients from CSV, a JSON array and
# JSON Lines (docs/BENCHMARKS.md, "Recipient files: memory by format").
#
# The sample campaign is scheduled a day ahead, so `send` checks it, stores it with its
# recipients from the file, says "scheduled for …" and waits; it is then stopped with SIGTERM
# (it exits 130, the campaign stays scheduled) and /usr/bin/time -v reports its peak RSS. So
# the figure covers process start, reading the file and the import — the part that depends on
# the file's format — and no delivery. Each run gets a fresh SQLite file; each run checks that
# N recipients were stored.
#
# Usage: scripts/bench-recipient-memory.sh [N...]        (default: 100000 1000000)
# Knobs (environment):
#   MARKETING_BIN=PATH   the binary to measure (default: target/release/marketing, built here)
#   BEFORE_BIN=PATH      also measure this binary (e.g. main's), alternated with MARKETING_BIN
#   BENCH_FORMATS="csv json jsonl"   which files
#   BENCH_KEEP=1         keep the work directory
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
    echo "bench-recipient-memory: FAILED: $*" >&2
    exit 1
}
say() { printf '==> %s\n' "$*" >&2; }

COUNTS=("$@")
[ ${#COUNTS[@]} -eq 0 ] && COUNTS=(100000 1000000)
FORMATS=${BENCH_FORMATS:-csv json jsonl}
[ -x /usr/bin/time ] || die "/usr/bin/time is missing (Debian: time)"
if [ -z "${MARKETING_BIN:-}" ]; then
    cargo build --release -p marketing >&2
    MARKETING_BIN=target/release/marketing
fi
BINARIES=("$MARKETING_BIN")
[ -n "${BEFORE_BIN:-}" ] && BINARIES=("$BEFORE_BIN" "$MARKETING_BIN")

WORK=$(mktemp -d)
cleanup() {
    [ "${BENCH_KEEP:-0}" = 1 ] && say "work directory kept: $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

python3 - "$WORK/campaign.json" <<'EOF'
import datetime, json, sys
campaign = json.load(open("examples/sample_campaign.json"))
campaign["recipients"] = []
at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
campaign["scheduled_at"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
json.dump(campaign, open(sys.argv[1], "w"))
EOF

generate() { # n -> recipients-N.{csv,json,jsonl}: the same people in each format
    [ -f "$WORK/recipients-$1.jsonl" ] && return 0
    say "generating $1 recipients"
    python3 - "$1" "$WORK/recipients-$1" <<'EOF'
import json, sys
n, base = int(sys.argv[1]), sys.argv[2]
names = ["Ada", "Bruno", "Chloe", "Dmitri", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas"]
cities = ["Lisbon", "Oslo", "Leeds", "Lyon", "Gdansk", "Porto", "Ghent", "Turku"]
genres = ["crime", "poetry", "history", "science fiction", "travel writing", "biography"]
with open(base + ".csv", "w") as csv, open(base + ".json", "w") as array, open(base + ".jsonl", "w") as lines:
    csv.write("email,first_name,city,genre\n")
    array.write("[\n")
    for i in range(n):
        r = {"email": f"reader{i}@subscribers.example", "first_name": names[i % 10],
             "city": cities[i % 8], "genre": genres[i % 6]}
        csv.write(",".join(r.values()) + "\n")
        array.write(("  " if i == 0 else ", ") + json.dumps(r) + "\n")
        lines.write(json.dumps(r) + "\n")
    array.write("]\n")
EOF
}

# Runs one import; prints "peak_rss_kib".
measure() { # binary file n name
    local bin=$1 file=$2 n=$3 name=$4 pid child
    rm -f "$WORK/$name.db"*
    env -u SMTP_URL DATABASE_URL="sqlite://$WORK/$name.db" OUTBOX_DIR="$WORK/outbox" \
        TRACKING_SECRET="bench-recipient-memory-secret-0123456789abcdef" RUST_LOG=warn \
        /usr/bin/time -v -o "$WORK/$name.time" "$bin" send "$WORK/campaign.json" --recipients "$file" \
        >"$WORK/$name.out" 2>"$WORK/$name.err" &
    pid=$!
    for _ in $(seq 1 3600); do
        grep -q "scheduled for" "$WORK/$name.err" && break
        kill -0 "$pid" 2>/dev/null || die "$name: send ended early: $(tail -n 5 "$WORK/$name.err")"
        sleep 0.5
    done
    grep -q "scheduled for" "$WORK/$name.err" || die "$name: send did not store the campaign within 30 minutes"
    child=$(pgrep -P "$pid") || die "$name: no send process under /usr/bin/time"
    kill -TERM "$child"
    wait "$pid" || true
    grep -q "stored campaign .*: $n recipients" "$WORK/$name.err" \
        || die "$name: not $n recipients stored: $(grep 'stored campaign' "$WORK/$name.err")"
    awk -F': *' '/Maximum resident set size/ {print $2}' "$WORK/$name.time"
}

printf '| recipients | format | file MiB | binary | peak RSS MiB |\n|---|---|---|---|---|\n'
for n in "${COUNTS[@]}"; do
    generate "$n"
    for format in $FORMATS; do
        file="$WORK/recipients-$n.$format"
        size=$(($(stat -c %s "$file") / 1024 / 1024))
        for bin in "${BINARIES[@]}"; do
            label=after
            [ "${#BINARIES[@]}" = 2 ] && [ "$bin" = "${BINARIES[0]}" ] && label=before
            if [ "$label" = before ] && [ "$format" = jsonl ] && ! "$bin" send --help | grep -q jsonl; then
                printf '| %s | %s | %s | %s | %s |\n' "$n" "$format" "$size" "$label" "not supported"
                continue
            fi
            rss=$(measure "$bin" "$file" "$n" "$format-$n-$label")
            say "$n $format ($size MiB) $label: peak RSS $((rss / 1024)) MiB"
            printf '| %s | %s | %s | %s | %s |\n' "$n" "$format" "$size" "$label" "$((rss / 1024))"
        done
    done
done
