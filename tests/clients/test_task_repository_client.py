"""A Python client generated from `marketing task-repo`'s live OpenAPI document runs a task's
life: create it, claim it with a lease, heart-beat, complete it, and read the result back."""

import importlib

WORKER = "generated-client-worker"


def operation(name):
    return importlib.import_module(f"task_repository.api.tasks.{name}")


def test_a_generated_client_creates_claims_and_completes_a_task(task_repository):
    package, client, _ = task_repository
    models = package.models
    payload = {"campaign": "c-1", "batch": [1, 2, 3]}
    task = operation("create_task").sync(
        client=client,
        body=models.NewTask(kind="generated_client_check", payload=payload, max_attempts=3),
    )
    assert isinstance(task, models.Task), task
    assert task.status == models.TaskStatus.PENDING
    assert task.payload == payload

    claimed = operation("claim_tasks").sync(
        client=client,
        body=models.ClaimBody(
            worker_id=WORKER, kinds=["generated_client_check"], limit=10, lease_ms=30_000
        ),
    )
    assert [claim.id for claim in claimed] == [task.id]
    claim = claimed[0]
    assert claim.status == models.TaskStatus.RUNNING
    assert claim.lease_owner == WORKER
    assert claim.attempts == 1

    lease = models.Lease(task_id=claim.id, attempt=claim.attempts)
    beat = operation("heartbeat_leases").sync(
        client=client,
        body=models.HeartbeatBody(worker_id=WORKER, leases=[lease], lease_ms=30_000),
    )
    assert beat.lost == []

    done = operation("complete_task").sync_detailed(
        claim.id,
        client=client,
        body=models.CompleteBody(worker_id=WORKER, attempt=claim.attempts, result={"sent": 3}),
    )
    assert done.status_code == 204

    stored = operation("get_task").sync(task.id, client=client)
    assert stored.status == models.TaskStatus.COMPLETED
    assert stored.result == {"sent": 3}
    counts = operation("count_tasks").sync(client=client)
    assert counts["completed"] == 1

    # The fencing token: the same lease cannot complete the task twice.
    again = operation("complete_task").sync(
        claim.id,
        client=client,
        body=models.CompleteBody(worker_id=WORKER, attempt=claim.attempts, result={}),
    )
    assert isinstance(again, models.Problem), again
    assert (again.status, again.type_) == (409, "/problems/lease-lost")


def test_a_generated_client_without_the_token_is_refused(task_repository):
    package, _, url = task_repository
    stranger = package.AuthenticatedClient(base_url=url, token="not-the-token")
    refused = operation("count_tasks").sync(client=stranger)
    assert isinstance(refused, package.models.Problem), refused
    assert (refused.status, refused.type_) == (401, "/problems/unauthorized")
