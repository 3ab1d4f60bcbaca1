"""aiosmtpd's Mailbox handler with refusals a test chooses through the addresses it sends, and
PIPELINING (RFC 2920) announced or not. aiosmtpd's own SMTP code does the protocol; this only
answers its MAIL, RCPT and EHLO hooks. (postfix smtp-sink stops announcing PIPELINING as soon
as it is told to refuse anything: its -f and -r imply -p.)

    python3 -m aiosmtpd -n -c aiosmtpd_refusing.Refusing MAILDIR pipelining|one-by-one

Addresses (local part, any domain):
  refuse-NNN       MAIL or RCPT is refused with reply code NNN (4xx or 5xx).
  refuse-NNN-keep  RCPT is refused with NNN but the recipient is kept anyway, so DATA gets
                   354: the server RFC 2920 section 3.1 warns clients about.
  forget           RCPT is accepted but not kept; if no other recipient is, aiosmtpd refuses
                   DATA itself ("503 Error: need RCPT command").

Every stored message gets "X-Pipelined-With-Mail": the commands the client had already sent
when MAIL arrived (e.g. "RCPT DATA"), without waiting for MAIL's reply; empty when it waited.
"""

import re

from aiosmtpd.handlers import Mailbox

RULE = re.compile(r"^(?:refuse-(?P<code>[45]\d\d)(?P<keep>-keep)?|(?P<forget>forget))@", re.I)


def refusal(code):
    return f"{code} {code[0]}.7.1 Refused by the test's address rule"


def pending_commands(server):
    """The command words of the complete lines the server has received but not yet read.

    asyncio's StreamReader keeps them in _buffer: what arrived in the same reads as the
    command being handled. A client that waits for each reply leaves nothing there.
    """
    buffered = bytes(getattr(server._reader, "_buffer", b""))
    lines = buffered.split(b"\r\n")[:-1]
    return " ".join(line.split(b" ", 1)[0].decode("ascii", "replace").upper() for line in lines)


class Refusing(Mailbox):
    def __init__(self, mail_dir, pipelining):
        super().__init__(mail_dir)
        self.pipelining = pipelining

    @classmethod
    def from_cli(cls, parser, *args):
        if len(args) != 2 or args[1] not in ("pipelining", "one-by-one"):
            parser.error("arguments: MAILDIR pipelining|one-by-one")
        return cls(args[0], args[1] == "pipelining")

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.pipelining:
            # Before the last line, "250 HELP".
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        rule = RULE.match(address)
        if rule and rule["code"]:
            return refusal(rule["code"])
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.pipelined_with_mail = pending_commands(server)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        rule = RULE.match(address)
        if rule and rule["forget"]:
            return "250 OK"
        if not rule or rule["keep"]:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        if rule:
            return refusal(rule["code"])
        return "250 OK"

    def prepare_message(self, session, envelope):
        message = super().prepare_message(session, envelope)
        message["X-Pipelined-With-Mail"] = getattr(envelope, "pipelined_with_mail", "")
        return message
