"""Writes the inputs of the golden cases in tests/golden/cases/ (run once; outputs are reviewed).

A golden case is a directory: ``message.eml``, ``envelope.toml`` (client, HELO, MAIL FROM, TLS,
SASL user, optional ``[config]`` overrides), ``zone.txt`` (StaticResolver zone text) and the
expected ``expected-header.txt`` and ``expected-verdict.txt``. The expected files are written by
``UPDATE_GOLDEN=1 pytest tests/unit/test_golden_cases.py`` and then *reviewed by a person* before
they are committed; the test compares byte for byte.

Usage: ``.venv/bin/python -m tests.golden.make_cases`` (keys are fixed seeds, so re-running
only changes the DKIM t= timestamps).
"""

from __future__ import annotations

from pathlib import Path

from tests.support import dkimkeys

CASES = Path(__file__).resolve().parent / "cases"
ED = dkimkeys.ed25519_key(b"\x07" * 32)
FORGER_IP = "198.51.100.66"


def mail(author: str, subject: str, extra: str = "") -> bytes:
    domain = author.rsplit("@", 1)[1].rstrip(">")
    return (f"{extra}From: {author}\r\nTo: bob@example.net\r\nSubject: {subject}\r\n"
            "Date: Fri, 27 Nov 2026 12:00:00 +0000\r\n"
            f"Message-ID: <{subject.replace(' ', '-')}@{domain}>\r\n\r\n"
            "Hello Bob.\r\n").encode()


def sign(raw: bytes, domain: str, selector: str = "ed",
         algorithm: str | None = None, key: dkimkeys.KeyPair = ED) -> bytes:
    return dkimkeys.sign(raw, key, selector, domain, algorithm=algorithm,
                         include_headers=["from", "to", "subject", "date", "message-id"])


BASE_ZONE = [
    'bank.example. TXT "v=spf1 ip4:192.0.2.0/24 -all"',
    "bank.example. A 192.0.2.1",
    '_dmarc.bank.example. TXT "v=DMARC1; p=reject; rua=mailto:d@bank.example"',
    'shop.example. TXT "v=spf1 ip4:192.0.2.0/24 -all"',
    "shop.example. A 192.0.2.2",
    '_dmarc.shop.example. TXT "v=DMARC1; p=quarantine"',
    'trial.example. TXT "v=spf1 ip4:192.0.2.0/24 -all"',
    "trial.example. A 192.0.2.3",
    '_dmarc.trial.example. TXT "v=DMARC1; p=reject; t=y"',
    'forger.example. TXT "v=spf1 ip4:198.51.100.0/24 -all"',
    "forger.example. A 198.51.100.1",
    'list.example. TXT "v=spf1 ip4:203.0.113.0/24 -all"',
    "list.example. A 203.0.113.1",
    dkimkeys.zone_line("ed._domainkey.bank.example", ED.record()),
    dkimkeys.zone_line("ed._domainkey.forger.example", ED.record()),
]


def envelope(client_ip: str, helo: str, mail_from: str, *, tls: str = "",
             sasl_user: str = "", config: str = "") -> str:
    lines = [f'client_ip = "{client_ip}"', f'helo = "{helo}"', f'mail_from = "{mail_from}"']
    if tls:
        lines.append(f'tls = "{tls}"')
    if sasl_user:
        lines.append(f'sasl_user = "{sasl_user}"')
    text = "\n".join(lines) + "\n"
    if config:
        text += "\n" + config.strip() + "\n"
    return text


def write(name: str, message: bytes, env: str, zone: list[str] | None = None) -> None:
    folder = CASES / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "message.eml").write_bytes(message)
    (folder / "envelope.toml").write_text(env)
    (folder / "zone.txt").write_text("\n".join(zone or BASE_ZONE) + "\n")


def main() -> None:
    write("01-dmarc-pass-via-dkim-when-forwarded",
          sign(mail("Alice <alice@bank.example>", "statement"), "bank.example"),
          envelope("203.0.113.9", "mx.list.example", "bounces@list.example",
                   tls="TLSv1.3:TLS_AES_256_GCM_SHA384:256"))
    write("02-p-reject-forgery-is-rejected",
          mail("CEO <ceo@bank.example>", "wire the money"),
          envelope(FORGER_IP, "mail.forger.example", "x@forger.example"))
    write("03-p-quarantine-forgery-is-quarantined",
          mail("billing@shop.example", "invoice"),
          envelope(FORGER_IP, "mail.forger.example", "x@forger.example"))
    write("04-testing-mode-steps-reject-down-to-quarantine",
          mail("news@trial.example", "trial"),
          envelope(FORGER_IP, "mail.forger.example", "x@forger.example"))
    write("05-np-applies-to-a-non-existent-subdomain",
          mail("ceo@nosuch.corp.example", "np"),
          envelope(FORGER_IP, "mail.forger.example", "x@forger.example"),
          [*BASE_ZONE, '_dmarc.corp.example. TXT "v=DMARC1; p=none; np=reject"',
           "corp.example. A 192.0.2.9"])
    write("06-dmarc-record-timeout-tempfails",
          mail("ceo@slow.example", "slow dns"),
          envelope(FORGER_IP, "mail.forger.example", "x@forger.example"),
          [*BASE_ZONE, "_dmarc.slow.example. TXT TIMEOUT", "slow.example. A 192.0.2.10"])
    write("07-second-author-cannot-turn-fail-into-pass",
          sign(mail("a@forger.example, b@bank.example", "two authors"), "forger.example"),
          envelope(FORGER_IP, "mail.forger.example", "x@forger.example"))
    write("08-authenticated-submission-is-not-enforced",
          mail("ceo@bank.example", "from the road"),
          envelope(FORGER_IP, "laptop.example", "ceo@bank.example", sasl_user="ceo"))
    write("09-tls-required-domain-over-plaintext",
          sign(mail("alice@bank.example", "plaintext"), "bank.example"),
          envelope("192.0.2.5", "mail.bank.example", "alice@bank.example",
                   config='[config.policy]\ntls_required_domains = ["bank.example"]'))
    write("10-dry-run-records-the-would-be-reject",
          mail("ceo@bank.example", "dry run"),
          envelope(FORGER_IP, "mail.forger.example", "x@forger.example",
                   config="[config.policy]\ndry_run = true"))
    write("11-rsa-sha1-signature-is-policy-not-pass",
          sign(mail("alice@bank.example", "old signer"), "bank.example", "rsa",
               algorithm="rsa-sha1", key=dkimkeys.rsa_key(1024)),
          envelope(FORGER_IP, "mail.forger.example", "x@forger.example"),
          [*BASE_ZONE, dkimkeys.zone_line("rsa._domainkey.bank.example",
                                          dkimkeys.rsa_key(1024).record())])
    write("12-comment-inside-the-from-domain",
          mail("ceo@bank.example(.forger.example)", "comment trick"),
          envelope(FORGER_IP, "mail.forger.example", "x@forger.example"))


if __name__ == "__main__":
    main()
