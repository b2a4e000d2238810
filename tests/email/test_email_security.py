"""Nobody posts as someone else: sender authentication, forged reply tokens, TLS."""

from __future__ import annotations

import asyncio
import base64
import datetime
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import dkim
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from bridge.email.auth import check_authentication_results, check_dkim
from testkit.matrix_client import MatrixTestClient
from tests.conftest import Homeserver
from tests.email.conftest import MAIL_DOMAIN, EmailBridge
from tests.email.test_email_bridge import _email_room, _mail, _send, _smtp_error

AUTHSERV = "mx.bridge.test"


def _with_results(msg: EmailMessage, results: str, authserv: str = AUTHSERV) -> EmailMessage:
    msg["Authentication-Results"] = f"{authserv}; {results}"
    return msg


@pytest.mark.parametrize("email_settings", [
    {"sender_auth": "authentication_results", "authserv_id": AUTHSERV}], indirect=True)
async def test_only_mail_our_mta_authenticated_is_posted(
        homeserver: Homeserver, email_bridge: EmailBridge, admin: MatrixTestClient) -> None:
    room, address = await _email_room(homeserver, admin, None, "erika@stadt.example")
    sender = "Erika <erika@stadt.example>"
    # No verdict at all, a verdict from someone else's MTA (a sender can add any header),
    # and a failing one: all refused with 5.7.1, none posted.
    for results, authserv in [(None, AUTHSERV),
                              ("dmarc=pass header.from=stadt.example", "mx.evil.example"),
                              ("dmarc=fail header.from=stadt.example; dkim=fail", AUTHSERV)]:
        msg = _mail(sender, address, "Gefälscht", "Bitte überweisen Sie 10.000 €.")
        if results:
            _with_results(msg, results, authserv)
        code, text = await _smtp_error(email_bridge, msg, [address])
        assert code == 550 and "5.7.1" in text and "authenticated" in text
    good = _with_results(_mail(sender, address, "Echt", "Diese Mail ist echt."),
                         "spf=pass smtp.mailfrom=erika@stadt.example; "
                         "dkim=pass header.d=stadt.example; dmarc=pass header.from=stadt.example")
    await _send(email_bridge, good)
    await admin.wait_for_event(room, lambda e: "Diese Mail ist echt." in
                               e["content"].get("body", ""), timeout=20)
    bodies = [e["content"].get("body", "") for e in await admin.messages(room, limit=30)]
    assert not any("überweisen" in b for b in bodies)


def test_authentication_results_needs_alignment_with_from() -> None:
    msg = _with_results(_mail("a@stadt.example", "x@y.example", "s", "b"),
                        "dkim=pass header.d=other.example; spf=pass smtp.mailfrom=a@other.example")
    verdict = check_authentication_results(msg, "a@stadt.example", AUTHSERV)
    assert not verdict.ok
    aligned = _with_results(_mail("a@sub.stadt.example", "x@y.example", "s", "b"),
                            "dkim=pass header.d=stadt.example")
    assert check_authentication_results(aligned, "a@sub.stadt.example", AUTHSERV).ok


def _dkim_key() -> tuple[bytes, bytes]:
    """(private key PEM, the selector's TXT record)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def _signed(msg: EmailMessage, private: bytes) -> bytes:
    raw = msg.as_bytes()
    return dkim.sign(raw, b"sel", b"stadt.example", private,
                     include_headers=[b"from", b"to", b"subject", b"message-id"]) + raw


def test_dkim_signature_is_verified_and_aligned() -> None:
    private, record = _dkim_key()

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == b"sel._domainkey.stadt.example." else None

    msg = _mail("Erika <erika@stadt.example>", "amt@x.example", "Signiert", "Hallo")
    signed = _signed(msg, private)
    assert check_dkim(signed, "erika@stadt.example", dnsfunc=dns).ok
    # Signed by stadt.example, but claiming another From domain: not aligned.
    assert not check_dkim(signed, "boss@rathaus.example", dnsfunc=dns).ok
    # Tampered body: the signature no longer verifies.
    assert not check_dkim(signed.replace(b"Hallo", b"Zahlen Sie"), "erika@stadt.example",
                          dnsfunc=dns).ok


@pytest.mark.parametrize("email_settings", [{"sender_auth": "verify"}], indirect=True)
async def test_dkim_checks_do_not_stall_the_bridge(
        homeserver: Homeserver, email_bridge: EmailBridge, admin: MatrixTestClient) -> None:
    room, address = await _email_room(homeserver, admin, None, "erika@stadt.example")
    private, record = _dkim_key()
    looked_up: list[bytes] = []

    def slow_dns(name: bytes, timeout: int = 5) -> bytes | None:
        looked_up.append(name)
        time.sleep(1.5)  # a slow resolver: it must not hold up everything else
        return record if name == b"sel._domainkey.stadt.example." else None

    email_bridge.email.dns_lookup = slow_dns
    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        msg = _mail("Erika <erika@stadt.example>", address, "Signiert", "Mit Signatur.")
        code, _ = await _smtp_error(email_bridge, _signed(msg, private), [address])
    finally:
        ticker.cancel()
    assert code == 250 and looked_up == [b"sel._domainkey.stadt.example."]
    assert max(gaps) < 0.5, max(gaps)  # the bridge kept running while the key was looked up
    await admin.wait_for_event(room, lambda e: "Mit Signatur." in e["content"].get("body", ""),
                               timeout=20)


async def test_forged_or_foreign_reply_tokens_are_refused(
        homeserver: Homeserver, email_bridge: EmailBridge, admin: MatrixTestClient) -> None:
    _, address = await _email_room(homeserver, admin, None, "erika@stadt.example")
    localpart = address.split("@")[0]
    msg = _mail("erika@stadt.example", "x", "Hallo", "Text")
    code, text = await _smtp_error(email_bridge, msg,
                                   [f"{localpart}+aaaaaaaaaaaaaaaaaaaaaaaaaaaa@{MAIL_DOMAIN}"])
    assert code == 550 and "5.7.1" in text


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, MAIL_DOMAIN)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_starttls_is_offered_when_configured(
        homeserver: Homeserver, database_url: str, admin: MatrixTestClient,
        tmp_path: Path) -> None:
    from testkit.smtp_sink import SmtpSink
    from testkit.synapse import free_port
    from tests.email.conftest import EmailBridge as Running

    cert, key = _self_signed(tmp_path)
    sink = SmtpSink()
    await sink.start()
    port = free_port()
    config = homeserver.config(
        database_url, email__enabled=True, email__domain=MAIL_DOMAIN,
        email__sender_auth="none", email__token_secret="test-token-secret-0123456789",
        email__smtp_in={"hostname": "127.0.0.1", "port": port, "tls_cert": str(cert),
                        "tls_key": str(key)},
        email__smtp_out={"host": sink.host, "port": sink.port})
    running = Running(homeserver, config, with_connectors=True)
    running.smtp_port = port
    await running.start()
    try:
        room, address = await _email_room(homeserver, admin, None, "erika@stadt.example")

        def send_over_tls() -> None:
            context = ssl.create_default_context(cafile=str(cert))
            context.check_hostname = False  # we dial 127.0.0.1; the chain is still checked
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.ehlo(MAIL_DOMAIN)
                assert client.has_extn("starttls")
                client.starttls(context=context)
                client.ehlo(MAIL_DOMAIN)
                msg = _mail("erika@stadt.example", address, "TLS", "Verschlüsselt gesendet")
                msg.replace_header("Message-ID", make_msgid(domain="stadt.example"))
                client.send_message(msg)

        await asyncio.to_thread(send_over_tls)
        await admin.wait_for_event(room, lambda e: "Verschlüsselt gesendet" in
                                   e["content"].get("body", ""), timeout=20)
    finally:
        await running.stop()
        await sink.stop()
