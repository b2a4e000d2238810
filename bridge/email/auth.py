"""Is the From address of an incoming mail really its sender?

Posting as a puppet means speaking for that person in the room, so a mail is only posted
when its From domain is authenticated: by the receiving MTA's Authentication-Results header
(the usual setup: the MTA checks SPF/DKIM/DMARC anyway) or by checking DKIM here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage

import authres

log = logging.getLogger("bridge.email.auth")

# dkimpy's DNS lookup: name -> TXT record bytes. Replaceable so tests need no DNS.
DnsFunc = Callable[..., bytes | None]


@dataclass(slots=True)
class AuthVerdict:
    ok: bool
    reason: str


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def _aligned(domain: str, from_domain: str) -> bool:
    """DMARC relaxed alignment: the same organisational domain (approximated by suffix)."""
    domain, from_domain = domain.lower().rstrip("."), from_domain.lower()
    return domain == from_domain or from_domain.endswith("." + domain) or \
        domain.endswith("." + from_domain)


def check_authentication_results(msg: EmailMessage, from_address: str,
                                 authserv_id: str) -> AuthVerdict:
    """Trust only headers stamped by our own MTA (``authserv_id``); senders can add others."""
    from_domain = _domain(from_address)
    seen = False
    for value in msg.get_all("Authentication-Results", []):
        try:
            header = authres.AuthenticationResultsHeader.parse(
                f"Authentication-Results: {value}")
        except Exception:
            continue  # unparsable: not ours
        if str(header.authserv_id).lower() != authserv_id.lower():
            continue
        seen = True
        for result in header.results:
            props = {f"{p.type}.{p.name}": str(p.value) for p in result.properties}
            if result.result != "pass":
                continue
            if result.method == "dmarc" and _aligned(props.get("header.from", ""),
                                                     from_domain):
                return AuthVerdict(True, "dmarc=pass")
            if result.method == "dkim" and _aligned(props.get("header.d", ""), from_domain):
                return AuthVerdict(True, f"dkim=pass (d={props['header.d']})")
            if result.method == "spf":
                mailfrom = props.get("smtp.mailfrom", "")
                if _aligned(_domain(mailfrom) if "@" in mailfrom else mailfrom, from_domain):
                    return AuthVerdict(True, "spf=pass (aligned)")
    if not seen:
        return AuthVerdict(False, f"no Authentication-Results header from {authserv_id}")
    return AuthVerdict(False, f"neither DMARC, DKIM nor SPF passed for {from_domain}")


def check_dkim(raw: bytes, from_address: str, dnsfunc: DnsFunc | None = None) -> AuthVerdict:
    """Verify every DKIM signature; one valid signature aligned with From suffices."""
    # dkimpy (and dnspython under it) only with email.sender_auth: verify: 4 MB of resident
    # memory the usual setup, which trusts the MTA's Authentication-Results, never needs.
    import dkim

    from_domain = _domain(from_address)
    try:
        verifier = dkim.DKIM(raw)
        count = len([h for h in verifier.headers if h[0].lower() == b"dkim-signature"])
        for index in range(count):
            kwargs = {"dnsfunc": dnsfunc} if dnsfunc is not None else {}
            if verifier.verify(idx=index, **kwargs):
                signer = (verifier.domain or b"").decode("ascii", "replace")
                if _aligned(signer, from_domain):
                    return AuthVerdict(True, f"dkim=pass (d={signer})")
    except Exception as exc:  # malformed signatures are simply not a pass
        log.info("DKIM check failed: %s", exc)
    return AuthVerdict(False, f"no valid DKIM signature aligned with {from_domain}")


def authenticate(mode: str, msg: EmailMessage | None, raw: bytes, from_address: str,
                 authserv_id: str, dnsfunc: DnsFunc | None = None) -> AuthVerdict:
    """``msg`` (the header block) is only read for ``authentication_results``, ``raw`` (the
    whole mail) only for ``verify``: the caller may leave out what the mode does not use."""
    if mode == "none":
        return AuthVerdict(True, "sender authentication is off (email.sender_auth: none)")
    if mode == "authentication_results":
        assert msg is not None
        return check_authentication_results(msg, from_address, authserv_id)
    return check_dkim(raw, from_address, dnsfunc)
