"""Clients generated from the services' live OpenAPI documents, driving real flows.

The fixtures start `marketing serve` (on SQLite, delivering to a real aiosmtpd server) and
`marketing task-repo` (with a bearer token) from the built binary, fetch each one's
`/api/v1/openapi.json`, generate a Python client from it with openapi-python-client and
import the generated package. A change to either document that breaks generation, or that
the generated code can no longer call, fails these tests.

MARKETING_BIN names the binary (default: target/debug/marketing).
"""

import importlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("MARKETING_BIN", ROOT / "target" / "debug" / "marketing")).resolve()
# How long a service may take to start, and a campaign to be delivered.
DEADLINE_SECONDS = 60


def wait_until(condition, what, deadline=DEADLINE_SECONDS):
    """Polls `condition` until it returns something truthy; fails with `what` at the deadline."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {deadline}s waiting for {what}")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Role:
    """A running `marketing` role; its base URL is read from the address it logs."""

    def __init__(self, args, env, workdir, listening):
        self.log = workdir / f"{args[0]}.log"
        self.process = subprocess.Popen(
            [str(BINARY), *args],
            cwd=workdir,
            env={**os.environ, "RUST_LOG": "info", **env},
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
        )
        pattern = re.compile(listening + r" on (http://[0-9.:]+)")

        def address():
            if self.process.poll() is not None:
                pytest.fail(f"marketing {args[0]} exited:\n{self.log.read_text()}")
            found = pattern.search(self.log.read_text())
            return found and found.group(1)

        self.url = wait_until(address, f"marketing {args[0]} to listen")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def generate_client(document_url, package, workdir):
    """Generates `package` from the live document at `document_url` and imports it."""
    document = workdir / f"{package}.openapi.json"
    response = httpx.get(document_url)
    assert response.status_code == 200, response.text
    document.write_bytes(response.content)
    output = workdir / "generated" / package
    shutil.rmtree(output, ignore_errors=True)
    command = shutil.which("openapi-python-client")
    command = [command] if command else [sys.executable, "-m", "openapi_python_client"]
    generated = subprocess.run(
        [*command, "generate", "--path", str(document), "--meta", "none",
         "--output-path", str(output)],
        capture_output=True,
        text=True,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    sys.path.insert(0, str(output.parent))
    importlib.import_module(f"{package}.models")
    return importlib.import_module(package)


class Mailbox:
    """A real SMTP server (aiosmtpd) that keeps every message it accepts."""

    def __init__(self):
        self.messages = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append(envelope)
        return "250 2.0.0 Ok: queued"

    def received(self):
        with self.lock:
            return list(self.messages)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    if not BINARY.exists():
        pytest.fail(f"{BINARY} does not exist: build it first (cargo build -p marketing)")
    return tmp_path_factory.mktemp("clients")


@pytest.fixture(scope="session")
def smtp_server():
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller.port, mailbox
    controller.stop()


@pytest.fixture(scope="session")
def api(workdir, smtp_server):
    """`marketing serve`, an API key for it, and the client generated from its document."""
    smtp_port, mailbox = smtp_server
    home = workdir / "serve"
    home.mkdir()
    env = {
        "DATABASE_URL": f"sqlite://{home / 'marketing.db'}",
        "SMTP_URL": f"smtp://127.0.0.1:{smtp_port}?tls=none",
        "API_RATE_LIMIT": "0",
    }
    key = subprocess.run(
        [str(BINARY), "api-key", "create", "--name", "generated-client"],
        cwd=home, env={**os.environ, **env}, capture_output=True, text=True, check=True,
    ).stdout.strip()
    role = Role(["serve", "--api-bind", "127.0.0.1:0"], env, home, "API listening")
    try:
        package = generate_client(f"{role.url}/api/v1/openapi.json", "marketing_api", workdir)
        client = package.AuthenticatedClient(base_url=role.url, token=key, raise_on_unexpected_status=True)
        yield package, client, mailbox
    finally:
        role.stop()


@pytest.fixture(scope="session")
def task_repository(workdir):
    """`marketing task-repo` with a token, and the client generated from its document."""
    home = workdir / "task-repo"
    home.mkdir()
    token = secrets.token_urlsafe(24)
    env = {"DATABASE_URL": f"sqlite://{home / 'tasks.db'}", "TASK_REPO_TOKEN": token}
    role = Role(
        ["task-repo", "--task-repo-bind", "127.0.0.1:0"], env, home,
        "task repository listening",
    )
    try:
        package = generate_client(f"{role.url}/api/v1/openapi.json", "task_repository", workdir)
        client = package.AuthenticatedClient(base_url=role.url, token=token, raise_on_unexpected_status=True)
        yield package, client, role.url
    finally:
        role.stop()
