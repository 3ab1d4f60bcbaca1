#!/usr/bin/env bash
# Compares builds (or settings) of `marketing` by alternating scripts/bench-delivery.sh runs,
# round by round, so every figure compared comes from one run on one machine state
# (docs/BENCHMARKS.md: compare within one run, never against an old figure). Each run measures
# its own ceiling (smtp-source -> smtp-sink) right before and right after the send, so the
# ratio column (to the higher of the two) is the figure to compare; msg/s moves with the
# machine's load.
#
# Usage: scripts/bench-alternate.sh ROUNDS VARIANT... -- MODE...
#   VARIANT   LABEL=BINARY[,NAME=VALUE...]   a binary and environment settings for its runs,
#             e.g. before=/tmp/marketing-old  after=target/release/marketing
#                  after-limited=target/release/marketing,SMTP_RATE_LIMIT=100000
#   MODE      the modes of scripts/bench-delivery.sh (sqlite-send, pg-send, pg-workers)
# BENCH_RECIPIENTS and the other knobs of scripts/bench-delivery.sh apply to every run.
# Prints one table: round, variant, and bench-delivery.sh's row.
set -euo pipefail
cd "$(dirname "$0")/.."
die() {
    echo "bench-alternate: FAILED: $*" >&2
    exit 1
}
[ $# -ge 4 ] || die "usage: $0 ROUNDS VARIANT... -- MODE..."
ROUNDS=$1
shift
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive whole number, not ${ROUNDS@Q}"
VARIANTS=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    [[ "$1" == *=* ]] || die "a variant is LABEL=BINARY[,NAME=VALUE...], not ${1@Q}"
    VARIANTS+=("$1")
    shift
done
[ "${1:-}" = "--" ] || die "the modes follow --"
shift
MODES=("$@")
[ ${#VARIANTS[@]} -ge 1 ] && [ ${#MODES[@]} -ge 1 ] || die "name at least one variant and one mode"

ROWS=$(mktemp)
trap 'rm -f "$ROWS"' EXIT
for round in $(seq 1 "$ROUNDS"); do
    for variant in "${VARIANTS[@]}"; do
        label=${variant%%=*}
        IFS=',' read -r -a parts <<<"${variant#*=}"
        binary=${parts[0]}
        [ -x "$binary" ] || die "$label: $binary is not an executable"
        settings=("MARKETING_BIN=$binary" "${parts[@]:1}")
        echo "==> round $round, $label: ${settings[*]}" >&2
        env "${settings[@]}" scripts/bench-delivery.sh "${MODES[@]}" >"$ROWS.out" \
            || die "round $round, $label: bench-delivery.sh failed"
        grep '^| [A-Za-z]' "$ROWS.out" | grep -v '^| store ' \
            | sed "s/^/| $round | $label /" >>"$ROWS"
    done
done
echo "| round | variant | store | mode | messages | msg/s | ceiling msg/s, before / after | ratio to the higher | peak RSS MiB | CPU s (user+sys) | CPU µs/msg | load avg after |"
echo "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
cat "$ROWS"
rm -f "$ROWS.out"
