#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a developer's: installs or starts what the tests
# need (PostgreSQL server, postfix smtp-sink, aiosmtpd, Prometheus, cargo-nextest), checks formatting and lints, builds once, then runs
# the SQLite suite, the PostgreSQL suite and everything else, both OpenAPI documents (validator,
# schemathesis) and the tests of clients generated from them, and prints how many tests each ran.
#
# With CI=true (or REQUIRE_POSTGRES=1 / REQUIRE_SMTP=1 / REQUIRE_PROMETHEUS=1) a PostgreSQL server,
# SMTP sink or Prometheus that cannot be started fails the run; otherwise those tests skip with a
# message.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }
ci() { [[ "${CI:-}" == "true" || "${CI:-}" == "1" ]]; }

apt_updated=false
apt_install() {
  if ! $apt_updated; then
    apt-get update -qq
    apt_updated=true
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_nextest() {
  if ! cargo nextest --version >/dev/null 2>&1; then
    say "installing cargo-nextest"
    cargo install --locked cargo-nextest
  fi
}

# PostgreSQL at 127.0.0.1:5432 with trust authentication and a database `test`.
ensure_postgres() {
  # sslmode=disable: the shared server's TLS is not what these suites test (TLS to PostgreSQL
  # has its own tests against a private-CA server they start), and sqlx's default `prefer`
  # would make every suite's connections slower than before TLS support existed.
  export TEST_POSTGRES_URL="${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}"
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    say "installing PostgreSQL"
    apt_install postgresql
  fi
  if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    say "starting PostgreSQL"
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 60); do
      pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null && break
      sleep 0.5
    done
  fi
  if ! psql "postgres://postgres@127.0.0.1:5432/postgres" -Atqc 'SELECT 1' >/dev/null 2>&1; then
    # A fresh Debian cluster asks for passwords over TCP; the tests use trust on loopback.
    local hba
    hba=$(ls /etc/postgresql/*/main/pg_hba.conf 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n "$hba" ]]; then
      sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
      su postgres -c "psql -Atqc 'SELECT pg_reload_conf()'" >/dev/null 2>&1 || true
    fi
  fi
  if psql "postgres://postgres@127.0.0.1:5432/postgres" -Atqc 'SELECT 1' >/dev/null 2>&1; then
    psql "postgres://postgres@127.0.0.1:5432/postgres" -Atqc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1 \
      || psql "postgres://postgres@127.0.0.1:5432/postgres" -qc 'CREATE DATABASE test'
    echo "PostgreSQL ready at $TEST_POSTGRES_URL"
  elif ci || [[ "${REQUIRE_POSTGRES:-}" == "1" ]]; then
    echo "error: PostgreSQL is required (CI) but cannot be reached at 127.0.0.1:5432" >&2
    exit 1
  else
    echo "warning: PostgreSQL is not reachable; its tests will skip" >&2
  fi
}

# Real SMTP servers the project did not write: postfix's smtp-sink/smtp-source and aiosmtpd.
ensure_smtp_servers() {
  if ! command -v smtp-sink >/dev/null 2>&1 && [[ ! -x /usr/sbin/smtp-sink ]]; then
    say "installing postfix (smtp-sink, smtp-source)"
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt_install postfix
  fi
  if ! /usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
    say "installing aiosmtpd"
    apt_install python3-aiosmtpd
  fi
  # TLS tests make a private CA and certificate with openssl.
  command -v openssl >/dev/null 2>&1 || apt_install openssl
}

# An independent DKIM verifier (dkimpy; PyNaCl for Ed25519) for the message tests.
ensure_dkimpy() {
  if ! python3 -c 'import dkim, nacl' >/dev/null 2>&1; then
    say "installing dkimpy"
    python3 -m pip install -q dkimpy pynacl
  fi
}

# Prometheus and promtool (Debian package prometheus): the monitoring tests run a real
# Prometheus against the roles and lint their /metrics. Without recommends: the package
# recommends a node exporter the tests do not need.
ensure_prometheus() {
  if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    say "installing Prometheus (prometheus, promtool)"
    if ! $apt_updated; then
      apt-get update -qq
      apt_updated=true
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null || true
  fi
  if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    echo "Prometheus ready: $(prometheus --version 2>&1 | head -n 1)"
  elif ci || [[ "${REQUIRE_PROMETHEUS:-}" == "1" ]]; then
    echo "error: Prometheus is required (CI) but could not be installed" >&2
    exit 1
  else
    echo "warning: Prometheus is not installed; the monitoring tests will skip" >&2
  fi
}

declare -a summary=()
failed=0
run_suite() {
  local name=$1 filter=$2 log
  log=$(mktemp)
  say "suite: $name"
  if cargo nextest run --workspace --no-fail-fast -E "$filter" 2>&1 | tee "$log"; then
    :
  else
    failed=1
  fi
  local line
  line=$(grep -E '^ +Summary' "$log" | tail -n 1 | sed -E 's/^ +Summary \[[^]]*\] +//')
  summary+=("$name: ${line:-no summary (build or filter failed)}")
  rm -f "$log"
}

ensure_nextest
ensure_postgres
ensure_smtp_servers
ensure_dkimpy
ensure_prometheus
if ci; then
  export REQUIRE_POSTGRES=1 REQUIRE_SMTP=1 REQUIRE_DKIMPY=1 REQUIRE_PROMETHEUS=1
fi

say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

say "building tests once"
cargo nextest run --workspace --no-run

run_suite "SQLite" 'test(/sqlite::/)'
run_suite "PostgreSQL" 'test(/postgres::/)'
run_suite "other" 'not (test(/sqlite::/) | test(/postgres::/))'

say "suite: OpenAPI (both live documents: openapi-spec-validator, then schemathesis)"
schema_log=$(mktemp)
if bash scripts/schemathesis.sh 2>&1 | tee "$schema_log"; then
  summary+=("schemathesis: documents valid; $(grep -E '^schemathesis (api|task-repo):' "$schema_log" | sed 's/^schemathesis //' | paste -sd ';' | sed 's/;/; /') (no 5xx, no response outside the document)")
else
  failed=1
  summary+=("schemathesis: FAILED (see above)")
fi
rm -f "$schema_log"

say "suite: generated clients (Python clients generated from both live documents, pytest)"
clients_log=$(mktemp)
if bash scripts/client-tests.sh -rA 2>&1 | tee "$clients_log"; then
  :
else
  failed=1
fi
clients_passed=$(grep -E '^[=]* ?[0-9]+ (passed|failed|error)' "$clients_log" | tail -n 1 | grep -oE '[0-9]+ passed' | awk '{print $1}' || true)
clients_failed=$(grep -E '^[=]* ?[0-9]+ (passed|failed|error)' "$clients_log" | tail -n 1 | grep -oE '[0-9]+ (failed|errors?)' | awk '{s+=$1} END {print s+0}' || true)
if [[ -z "$clients_passed$clients_failed" || ( "${clients_passed:-0}" == 0 && "${clients_failed:-0}" == 0 ) ]]; then
  clients_failed=1
  failed=1
fi
summary+=("generated clients: ${clients_passed:-0} passed, ${clients_failed:-0} failed")
rm -f "$clients_log"

say "suite: deployment files (docker-compose config, promtool)"
if bash scripts/check-deploy.sh; then
  summary+=("deployment: docker-compose config and promtool checks passed")
else
  failed=1
  summary+=("deployment: FAILED (see above)")
fi

say "summary"
printf '%s\n' "${summary[@]}"
# Totals count tests only (the nextest suites and the generated-client tests), not
# schemathesis's generated requests.
count() { printf '%s\n' "${summary[@]}" | grep -v '^schemathesis' | { grep -oE "[0-9]+ $1" || true; } | awk '{s+=$1} END {print s+0}'; }
passed=$(count passed)
failures=$(count failed)
echo "total: $passed passed, $failures failed"
if [[ $failed -ne 0 ]]; then
  echo "some tests failed" >&2
  exit 1
fi
