"""Schemathesis hooks for scripts/schemathesis.sh (loaded through SCHEMATHESIS_HOOKS).

The recipients upload accepts JSON Lines (`application/x-ndjson`, `application/jsonl`), which
schemathesis cannot serialize on its own: a generated text body is sent as it is, and generated
objects or arrays become one JSON document per line — what a JSON Lines client sends.
"""
import json

import schemathesis


@schemathesis.serializer("application/x-ndjson", "application/jsonl")
def json_lines(ctx, value):
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    items = value if isinstance(value, list) else [value]
    return "".join(json.dumps(item) + "\n" for item in items).encode("utf-8")
