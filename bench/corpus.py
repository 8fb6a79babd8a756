"""The benchmark corpus: reproducible messages, SMTP sessions and the DNS zone that serves them.

Everything is drawn from ``random.Random(seed)``: message text, sizes (3-10 KB), attachments,
categories, recipients and sessions. Keys come from ``tests/support/dkimkeys.py``: ed25519 from a
fixed seed, RSA-2048 from ``openssl genrsa`` (fresh per run, which changes signature bytes but no
sizes or work). Categories (weights in ``CATEGORIES``):

- ``pass-rsa`` / ``pass-ed25519`` / ``pass-dual``: signed by the From domain, SPF pass;
- ``tampered``: signed, then the body changed (dkim=fail; DMARC still passes by aligned SPF);
- ``unsigned``: no signature, SPF pass (DMARC pass by SPF);
- ``spf-fail``: envelope domain whose SPF refuses the client; half signed by the From domain
  (DMARC pass by DKIM), half unsigned (DMARC fail: the From domain's p= applies);
- ``forgery``: From a p=reject domain, sent and possibly signed by another domain (DMARC fail,
  rejected by both stacks).

Domains: a shared pool (caches warm up as in production) or, with ``unique_domains``, fresh names
for every message and session, so every lookup is a cache miss (the cold-cache measurement).
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hashlib
import random
from dataclasses import dataclass, field

from tests.support import dkimkeys

TLD = "example"  # RFC 2606; not one of the names Unbound answers itself (as it does "test.")
AUTHSERV_ID = f"mx.bench.{TLD}"
RELAY_SPF = f"_spf.relay.bench.{TLD}"
RCPT_DOMAIN = "example.net"
RSA_SELECTOR = "rsa2048"
ED_SELECTOR = "ed25519"
CLIENT_NET = "192.0.2."
MIN_SIZE, MAX_SIZE = 3000, 10000  # bytes, as sent (signatures included)

CATEGORIES: tuple[tuple[str, int], ...] = (
    ("pass-rsa", 28),
    ("pass-ed25519", 17),
    ("pass-dual", 10),
    ("tampered", 10),
    ("unsigned", 10),
    ("spf-fail", 12),
    ("forgery", 13),
)
POLICIES = ("none", "none", "quarantine", "reject")

_VOCABULARY = (
    "account agenda answer archive balance budget calendar change client contract delivery "
    "design details draft estimate feedback figure follow forecast invoice issue latest "
    "meeting minutes notes offer order payment plan please project proposal quarter question "
    "receipt reminder report request review schedule service shipment status summary support "
    "team thanks ticket timeline update version week workshop"
)
_WORDS = _VOCABULARY.split()


@dataclass(frozen=True)
class BenchMessage:
    """One message and its envelope; ``category`` says what the checks should find."""

    index: int
    raw: bytes
    mail_from: str
    rcpts: tuple[str, ...]
    category: str
    from_domain: str
    policy: str
    attachment: bool
    signatures: int


@dataclass(frozen=True)
class SessionSpec:
    """The SMTP client side of one session: address, name, HELO and whether it used TLS."""

    client_ip: str
    client_name: str
    helo: str
    tls: bool


@dataclass
class Corpus:
    """Messages, client sessions and DNS records (name, type, value, ttl)."""

    name: str
    seed: int
    messages: list[BenchMessage]
    sessions: list[SessionSpec]
    zone: list[tuple[str, str, str, int]] = field(default_factory=list)

    def digest(self) -> str:
        """SHA-256 over the unsigned structure (stable across runs with the same seed)."""
        h = hashlib.sha256()
        for m in self.messages:
            h.update(f"{m.index}|{m.category}|{m.mail_from}|{m.rcpts}|{m.policy}|".encode())
            body = m.raw.split(b"\r\n\r\n", 1)[-1]
            h.update(hashlib.sha256(body).digest())
        for s in self.sessions:
            h.update(f"{s.client_ip}|{s.helo}|{s.tls}|".encode())
        return h.hexdigest()

    def summary(self) -> dict[str, object]:
        sizes = [len(m.raw) for m in self.messages]
        counts: dict[str, int] = {}
        for m in self.messages:
            counts[m.category] = counts.get(m.category, 0) + 1
        return {
            "name": self.name,
            "seed": self.seed,
            "messages": len(self.messages),
            "sessions": len(self.sessions),
            "categories": counts,
            "with_attachment": sum(1 for m in self.messages if m.attachment),
            "size_bytes": {"min": min(sizes, default=0), "max": max(sizes, default=0),
                           "mean": round(sum(sizes) / len(sizes)) if sizes else 0},
            "zone_records": len(self.zone),
            "digest": self.digest(),
        }


class _Zone:
    def __init__(self) -> None:
        self.records: dict[tuple[str, str, str], int] = {}

    def add(self, name: str, rdtype: str, value: str, ttl: int = 3600) -> None:
        self.records.setdefault((name.lower(), rdtype, value), ttl)

    def as_list(self) -> list[tuple[str, str, str, int]]:
        return [(n, t, v, ttl) for (n, t, v), ttl in self.records.items()]


@dataclass
class _Keys:
    rsa: dkimkeys.KeyPair
    ed: dkimkeys.KeyPair


def keys() -> _Keys:
    """The signing keys (cached per process by dkimkeys)."""
    return _Keys(dkimkeys.rsa_key(2048), dkimkeys.ed25519_key(b"\x42" * 32))


def _words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(count))


def _text(rng: random.Random, nbytes: int) -> str:
    lines: list[str] = []
    total = 0
    while total < nbytes:
        line = _words(rng, rng.randint(6, 12)).capitalize() + "."
        lines.append(line)
        total += len(line) + 2
        if rng.random() < 0.15:
            lines.append("")
            total += 2
    return "\r\n".join(lines) + "\r\n"


def _build_message(rng: random.Random, index: int, from_addr: str, rcpts: tuple[str, ...],
                   target: int, attachment: bool, signed: int) -> bytes:
    domain = from_addr.rpartition("@")[2]
    when = dt.datetime(2024, 5, 1, 8, 0, tzinfo=dt.UTC) + dt.timedelta(minutes=index)
    headers = [
        f"From: {rng.choice(['Alex', 'Sam', 'Kim', 'Noor', 'Jo'])} Example <{from_addr}>",
        "To: " + ", ".join(f"<{r}>" for r in rcpts),
        f"Subject: {_words(rng, rng.randint(3, 7)).capitalize()}",
        f"Date: {email.utils.format_datetime(when)}",
        f"Message-ID: <{index}.{rng.getrandbits(48):012x}@{domain}>",
        "MIME-Version: 1.0",
    ]
    head_len = sum(len(h) + 2 for h in headers) + 80
    budget = max(800, target - head_len - signed * 550)
    if not attachment:
        headers.append("Content-Type: text/plain; charset=utf-8")
        body = _text(rng, budget)
    else:
        boundary = f"=_bench_{rng.getrandbits(40):010x}"
        headers.append(f'Content-Type: multipart/mixed; boundary="{boundary}"')
        text_len = max(300, int(budget * rng.uniform(0.2, 0.4)))
        blob_len = max(200, int((budget - text_len - 300) * 3 / 4))
        blob = base64.b64encode(rng.randbytes(blob_len)).decode("ascii")
        b64 = "\r\n".join(blob[i : i + 76] for i in range(0, len(blob), 76))
        body = (
            f"This is a multi-part message in MIME format.\r\n\r\n--{boundary}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
            f"{_text(rng, text_len)}\r\n--{boundary}\r\n"
            f'Content-Type: application/octet-stream; name="report-{index}.pdf"\r\n'
            "Content-Transfer-Encoding: base64\r\n"
            f'Content-Disposition: attachment; filename="report-{index}.pdf"\r\n\r\n'
            f"{b64}\r\n--{boundary}--\r\n"
        )
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode()


def _pick_category(rng: random.Random) -> str:
    names = [c for c, _ in CATEGORIES]
    weights = [w for _, w in CATEGORIES]
    return rng.choices(names, weights)[0]


def build_corpus(name: str, seed: int, count: int, *, unique_domains: bool = False,
                 sessions: int = 32) -> Corpus:
    """``count`` messages and ``sessions`` client sessions (the driver cycles through them)."""
    rng = random.Random(f"{seed}:{name}")
    k = keys()
    zone = _Zone()
    zone.add(RELAY_SPF, "TXT", f"v=spf1 ip4:{CLIENT_NET}0/24 ip4:198.51.100.0/24 -all")

    def sender_domain(kind: str, number: int) -> str:
        # Two labels under the TLD: the organizational domain is the domain itself for every
        # DMARC discovery method (RFC 9989 tree walk, the PSL's "*" rule in RFC 7489 mode).
        tag = f"{name}-{number:05d}" if unique_domains else f"{number:02d}"
        return f"{kind}{tag}.{TLD}"

    def publish_sender(domain: str, policy: str, spf: str) -> None:
        zone.add(domain, "TXT", spf)
        zone.add(f"_dmarc.{domain}", "TXT", f"v=DMARC1; p={policy}; adkim=r; aspf=r")
        zone.add(dkimkeys.key_name(RSA_SELECTOR, domain), "TXT", k.rsa.record())
        zone.add(dkimkeys.key_name(ED_SELECTOR, domain), "TXT", k.ed.record())

    pass_spf = f"v=spf1 include:{RELAY_SPF} -all"
    fail_spf = "v=spf1 ip4:203.0.113.0/24 -all"
    pools = {"sn": 40, "sf": 8, "bank": 8, "ph": 8}

    def domain_for(kind: str, index: int) -> str:
        return sender_domain(kind, index if unique_domains else rng.randrange(pools[kind]))

    def policy_for(domain: str) -> str:
        return POLICIES[int(hashlib.sha256(domain.encode()).hexdigest(), 16) % len(POLICIES)]

    messages: list[BenchMessage] = []
    for index in range(count):
        category = _pick_category(rng)
        rcpts = tuple(f"user{rng.randrange(500)}@{RCPT_DOMAIN}"
                      for _ in range(1 if rng.random() < 0.8 else 2))
        attachment = rng.random() < 0.3
        target = rng.randint(MIN_SIZE, MAX_SIZE)
        if category == "forgery":
            author = domain_for("bank", index)
            policy = "reject"
            publish_sender(author, policy, pass_spf)
            sender = domain_for("ph", index)
            publish_sender(sender, "none", pass_spf)
            from_addr, mail_from = f"security@{author}", f"alerts@{sender}"
            sign_domain = sender if rng.random() < 0.5 else None
        else:
            author = domain_for("sn", index)
            policy = policy_for(author)
            publish_sender(author, policy, pass_spf)
            from_addr = f"{rng.choice(['news', 'billing', 'alex'])}@{author}"
            mail_from = f"bounces@{author}"
            sign_domain = None if category == "unsigned" else author
            if category == "spf-fail":
                sender = domain_for("sf", index)
                publish_sender(sender, "none", fail_spf)
                mail_from = f"bounces@{sender}"
                sign_domain = author if rng.random() < 0.5 else None
        algorithms: list[dkimkeys.KeyPair] = []
        if sign_domain is not None:
            if category in ("pass-rsa", "forgery", "spf-fail"):
                algorithms = [k.rsa]
            elif category == "pass-ed25519":
                algorithms = [k.ed]
            elif category == "pass-dual":
                algorithms = [k.rsa, k.ed]
            else:  # tampered
                algorithms = [k.rsa if rng.random() < 0.6 else k.ed]
        canon = (b"relaxed", b"relaxed") if rng.random() < 0.75 else (b"relaxed", b"simple")
        forged_ar = category.startswith("pass") and rng.random() < 0.05
        raw = b""
        for _attempt in range(4):  # rebuild with a corrected size until it lands in range
            # The text comes from its own seeded generator, so a rebuild is reproducible too.
            text_rng = random.Random(f"{seed}:{name}:{index}")
            raw = _build_message(text_rng, index, from_addr, rcpts, target, attachment,
                                 len(algorithms))
            for key in algorithms:
                selector = RSA_SELECTOR if key.kind == "rsa" else ED_SELECTOR
                assert sign_domain is not None
                raw = dkimkeys.sign(raw, key, selector, sign_domain, canonicalize=canon)
            if category == "tampered":
                raw += b"-- \r\nAppended by a mailing list footer after signing.\r\n"
            if forged_ar:
                # An upstream forgery claiming our authserv-id: the milter must delete it.
                raw = f"Authentication-Results: {AUTHSERV_ID}; dkim=pass\r\n".encode() + raw
            if MIN_SIZE <= len(raw) <= MAX_SIZE:
                break
            wanted = min(max(len(raw), MIN_SIZE + 150), MAX_SIZE - 150)
            target += wanted - len(raw)
        messages.append(BenchMessage(index, raw, mail_from, rcpts, category, author, policy,
                                     attachment, len(algorithms)))

    specs: list[SessionSpec] = []
    for number in range(sessions):
        ip = f"{CLIENT_NET}{10 + number % 200}"
        tag = f"{name}-{number:05d}" if unique_domains else f"{number:02d}"
        helo = f"mail.cl{tag}.{TLD}"
        zone.add(helo, "A", ip)
        zone.add(helo, "TXT", "v=spf1 a -all")
        specs.append(SessionSpec(ip, helo, helo, rng.random() < 0.7))
    return Corpus(name, seed, messages, specs, zone.as_list())


def expected_action(message: BenchMessage) -> str:
    """What a correct DMARC-enforcing filter does with the message (for the report)."""
    if message.category == "forgery":
        return "reject"
    if message.category == "spf-fail" and not message.signatures:
        return {"reject": "reject", "quarantine": "quarantine"}.get(message.policy, "accept")
    return "accept"
