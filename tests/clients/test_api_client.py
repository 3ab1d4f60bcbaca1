"""A Python client generated from `marketing serve`'s live OpenAPI document runs a campaign:
create it, upload recipients, send it, poll its status to `completed`, and find every message
at the SMTP server."""

import importlib
import uuid
from email import message_from_bytes
from email.header import decode_header, make_header

from conftest import wait_until


def operation(name):
    """A generated operation module, e.g. `campaigns.create_campaign`."""
    return importlib.import_module(f"marketing_api.api.{name}")


def subject_of(envelope):
    message = message_from_bytes(envelope.content)
    return str(make_header(decode_header(message["Subject"])))


def test_a_generated_client_sends_a_campaign_to_completion(api):
    package, client, mailbox = api
    models = package.models
    document = models.CampaignDocument(
        name="Generated client check",
        from_=models.Mailbox(email="news@example.com", name="Newsroom"),
        templates=models.Templates(
            subject="Hello {{ first_name }}",
            text="Hi {{ first_name }}. Unsubscribe: {{ unsubscribe_url }}",
            html="<p>Hi {{ first_name }}.</p><p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p>",
        ),
    )
    created = operation("campaigns.create_campaign").sync(client=client, body=document)
    assert isinstance(created, models.Created), created
    campaign_id = str(created.campaign.id)
    assert created.campaign.status == models.CampaignStatus.DRAFT

    recipients = []
    for name in ["Ann", "Bob", "Cleo", "Ann"]:
        recipient = models.Recipient(email=f"{name.lower()}@example.org")
        recipient["first_name"] = name
        recipients.append(recipient)
    report = operation("recipients.add_recipients").sync(campaign_id, client=client, body=recipients)
    assert isinstance(report, models.ImportReport), report
    assert (report.received, report.imported, report.duplicates) == (4, 3, 1)
    assert [(row.row, row.email) for row in report.duplicate_rows] == [(4, "ann@example.org")]

    queued = operation("control.send_campaign").sync(campaign_id, client=client)
    assert isinstance(queued, models.StatusView), queued

    def completed():
        status = operation("campaigns.get_campaign_status").sync(campaign_id, client=client)
        assert isinstance(status, models.StatusView), status
        assert status.status not in (models.CampaignStatus.FAILED, models.CampaignStatus.CANCELLED)
        return status if status.status == models.CampaignStatus.COMPLETED else None

    status = wait_until(completed, "the campaign to complete")
    assert status.recipients == 3
    assert status.deliveries["sent"] == 3
    assert sum(status.deliveries.additional_properties.values()) == 3

    page = operation("recipients.list_deliveries").sync(campaign_id, client=client)
    assert isinstance(page, models.DeliveryPage), page
    assert sorted(item.email for item in page.items) == [
        "ann@example.org", "bob@example.org", "cleo@example.org",
    ]
    assert all(item.status == models.DeliveryStatus.SENT for item in page.items)
    assert all(item.smtp_reply.startswith("250") for item in page.items), page.items

    delivered = {envelope.rcpt_tos[0]: envelope for envelope in mailbox.received()}
    for name in ["Ann", "Bob", "Cleo"]:
        envelope = delivered[f"{name.lower()}@example.org"]
        assert subject_of(envelope) == f"Hello {name}"

    listed = operation("campaigns.list_campaigns").sync(client=client)
    assert campaign_id in [str(campaign.id) for campaign in listed.items]


def test_a_generated_client_reads_problem_documents(api):
    package, client, _ = api
    missing = operation("campaigns.get_campaign_status").sync(str(uuid.uuid4()), client=client)
    assert isinstance(missing, package.models.ProblemDetails), missing
    assert missing.status == 404

    refused = operation("suppressions.add_suppression").sync(
        client=client, body=package.models.AddSuppression(email="not an address")
    )
    assert isinstance(refused, package.models.ProblemDetails), refused
    assert refused.status == 422
    assert "email" in refused.detail
