#!/usr/bin/env bash
# Clients generated from the live OpenAPI documents drive real flows (tests/clients): pytest
# starts `marketing serve` (delivering to a real aiosmtpd server) and `marketing task-repo`,
# generates a Python client from each one's /api/v1/openapi.json with openapi-python-client,
# then creates, fills, sends and completes a campaign, and creates, claims and completes a
# task, through the generated code. Installs pytest, openapi-python-client and aiosmtpd for
# python3 when missing. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export MARKETING_BIN
MARKETING_BIN=$(realpath "${MARKETING_BIN:-${CARGO_TARGET_DIR:-target}/debug/marketing}")
missing=()
python3 -c 'import pytest' 2>/dev/null || missing+=(pytest)
python3 -c 'import openapi_python_client' 2>/dev/null || missing+=(openapi-python-client)
python3 -c 'import aiosmtpd' 2>/dev/null || missing+=(aiosmtpd)
if (( ${#missing[@]} > 0 )); then
  python3 -m pip install -q "${missing[@]}"
fi
exec python3 -m pytest tests/clients -p no:cacheprovider -q "$@"
