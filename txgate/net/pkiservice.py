# -*- test-case-name: tests.net.test_pkiservice -*-
"""
Serving txgate's CRL, OCSP responder and issuer certificate over plain HTTP:
the dedicated C{crl_listen} listener (any Host), and the answer the explicit
and transparent services give to requests for C{crl_host}. Never behind
authentication: a client that cannot fetch the CRL aborts its handshake.
"""

from __future__ import annotations

from typing import Any

from twisted.web import resource, server

from txgate.pki.authority import MAX_OCSP_BODY, Answer, Authority

__all__ = ["AuthorityResource", "authority_site"]


class AuthorityResource(resource.Resource):
    """Every request answered by L{Authority.http_answer}."""

    isLeaf = True

    def __init__(self, authority: Authority) -> None:
        super().__init__()
        self._authority = authority

    def render(self, request: Any) -> bytes:
        method = request.method.decode("ascii", "replace")
        body = request.content.read(MAX_OCSP_BODY + 1) if method == "POST" else b""
        answer: Answer = self._authority.http_answer(method, request.path.decode("ascii", "replace"), body)
        request.setResponseCode(answer.status)
        for name, value in answer.headers():
            request.setHeader(name, value)
        return answer.body


def authority_site(authority: Authority) -> server.Site:
    """The site of the C{crl_listen} listener."""
    site = server.Site(AuthorityResource(authority))
    site.noisy = False
    site.displayTracebacks = False
    return site
