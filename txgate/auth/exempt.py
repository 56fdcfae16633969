# -*- test-case-name: tests.auth.test_exempt -*-
"""
Requests that are never challenged for proxy credentials: certificate
revocation and CA-issuer fetches.

Windows (CryptoAPI, Authenticode, the Microsoft Online Sign-In Assistant)
fetches CRLs, issuer certificates and OCSP responses itself, without the
user's proxy credentials, and treats a CRL it cannot fetch as a revoked
certificate: Lync and Skype for Business then fail to sign in. So these
fetches pass without authentication whatever policy says; policy still
decides whether they are allowed.

Pure: a request head in, a yes or no out.
"""

from __future__ import annotations

import base64
import binascii
from typing import Collection, Iterable
from urllib.parse import unquote_to_bytes

from cryptography.x509 import ocsp

from txgate.http.proxying import Target

__all__ = ["is_revocation_fetch", "REVOCATION_SUFFIXES", "OCSP_REQUEST_TYPE", "MAX_OCSP_GET_PATH"]

REVOCATION_SUFFIXES = (b".crl", b".crt", b".cer", b".p7c")
"""
Path suffixes (any case) of GET/HEAD fetches that are exempt: CRLs
(C{.crl}) and CA-issuer certificates named in Authority Information Access
(C{.crt}, C{.cer}, and C{.p7c} bundles).
"""

OCSP_REQUEST_TYPE = b"application/ocsp-request"
"""The media type of an OCSP request sent by POST (RFC 6960 appendix A.1)."""

MAX_OCSP_GET_PATH = 4096
"""
Longest path looked at for an OCSP GET. An OCSP request for one
certificate is about 80 bytes of DER (under 200 characters once base64 and
URL encoded), and RFC 6960 already steers requests over 255 bytes to POST;
a longer path is not parsed.
"""

_MAX_SEGMENTS = 8
"""Trailing path segments joined when looking for a request whose base64 holds unescaped '/'."""


def _content_type(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    found = None
    for name, value in headers:
        if name.lower() == b"content-type":
            if found is not None:
                return None  # two Content-Types: not a request we can vouch for
            found = value.split(b";", 1)[0].strip().lower()
    return found


def _is_ocsp_request(encoded: bytes) -> bool:
    """Whether C{encoded} is the URL-encoded base64 of a DER OCSPRequest."""
    try:
        text = unquote_to_bytes(encoded)
        text += b"=" * (-len(text) % 4)
        der = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    if not der:
        return False
    try:
        ocsp.load_der_ocsp_request(der)
    except ValueError:
        return False
    return True


def _ocsp_get(path: bytes) -> bool:
    """
    RFC 6960 appendix A.1: C{GET {url}/{url-encoding of base-64 encoding of
    the DER encoding of the OCSPRequest}}. Some clients leave the C{/} of the
    base64 alphabet unescaped, so a request may span several trailing path
    segments: each tail is tried, shortest first.
    """
    if len(path) > MAX_OCSP_GET_PATH:
        return False
    segments = path.split(b"/")[1:]
    for count in range(1, min(len(segments), _MAX_SEGMENTS) + 1):
        tail = b"/".join(segments[-count:])
        if tail and _is_ocsp_request(tail):
            return True
    return False


def is_revocation_fetch(
    method: bytes,
    target: Target,
    headers: Iterable[tuple[bytes, bytes]],
    own_hosts: Collection[str] = frozenset(),
) -> bool:
    """
    Whether a request fetches revocation or issuer data, and so is never
    challenged for credentials.

    True for:
      - GET or HEAD of a path ending C{.crl}, C{.crt}, C{.cer} or C{.p7c}
        (any case; the query is ignored);
      - POST with C{Content-Type: application/ocsp-request};
      - GET whose last path segment(s) are a URL-encoded base64 DER OCSP
        request (checked by parsing it, not by its look);
      - any request to a host in C{own_hosts} (txgate's own CRL and OCSP
        responder), CONNECT included.

    @param method: the request method as sent.
    @param target: the parsed request target.
    @param headers: the request headers (name, value) as bytes.
    @param own_hosts: lower-case host names txgate itself serves CRLs or OCSP on.
    """
    if target.host.lower() in own_hosts:
        return True
    if target.scheme is None:  # CONNECT: nothing more to see
        return False
    path = target.path.split(b"?", 1)[0]
    if method in (b"GET", b"HEAD") and path.lower().endswith(REVOCATION_SUFFIXES):
        return True
    if method == b"POST":
        return _content_type(headers) == OCSP_REQUEST_TYPE
    if method == b"GET":
        return _ocsp_get(path)
    return False
