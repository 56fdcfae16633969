# -*- test-case-name: tests.net.test_sni -*-
"""
TLS towards clients of a reverse virtual service: one context per
certificate file, chosen by the name the client asks for (SNI), the first
file for clients that ask for none.
"""

from __future__ import annotations

from typing import Any, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from txgate.errors import ConfigError, ConfigErrors
from txgate.pki.keyring import read_file

__all__ = ["SNIServerTLS", "load_server_tls"]


def _select_http1(connection: SSL.Connection, offered: list[bytes]) -> Any:
    # Twisted 26.4+ fails handshakes that offer ALPN when none is selectable.
    return b"http/1.1" if b"http/1.1" in offered else SSL.NO_OVERLAPPING_PROTOCOLS


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [str(a.value).lower() for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    return names


@implementer(IOpenSSLServerConnectionCreator)
class SNIServerTLS:
    """
    Server connections whose certificate follows the client's SNI: exact
    names first, then a C{*.} wildcard for the parent domain, then the
    default.
    """

    def __init__(self, default: SSL.Context, by_name: dict[str, SSL.Context]) -> None:
        self._default = default
        self._by_name = by_name
        default.set_tlsext_servername_callback(self._servername)

    def _servername(self, connection: SSL.Connection) -> None:
        name = connection.get_servername()
        if not name:
            return
        host = name.decode("ascii", "replace").lower().rstrip(".")
        context = self._by_name.get(host)
        if context is None and "." in host:
            context = self._by_name.get("*." + host.split(".", 1)[1])
        if context is not None and context is not self._default:
            connection.set_context(context)

    def serverConnectionForTLS(self, tls: Any) -> SSL.Connection:
        connection = SSL.Connection(self._default, None)
        connection.set_accept_state()
        return connection


def _context(path: str, data: bytes, errors: list[ConfigError], key: str) -> tuple[SSL.Context, list[str]] | None:
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        errors.append(ConfigError(path, key, f"no PEM certificate in it: {e}"))
        return None
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        errors.append(ConfigError(path, key, f"no unencrypted PEM private key in it: {e}"))
        return None
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)  # an idle connection keeps no 34 KiB of record buffers
    try:
        context.use_certificate(crypto.X509.from_cryptography(chain[0]))
        for extra in chain[1:]:
            context.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
        context.use_privatekey(crypto.PKey.from_cryptography_key(private))  # type: ignore[arg-type]
        context.check_privatekey()
    except (SSL.Error, TypeError) as e:
        errors.append(ConfigError(path, key, f"the private key does not match the first certificate ({e})"))
        return None
    context.set_alpn_select_callback(_select_http1)
    context.set_session_id(b"txgate-reverse")
    return context, _names(chain[0])


def load_server_tls(paths: Sequence[str], key: str) -> SNIServerTLS:
    """
    Load each PEM file (private key, then or before the certificate and its
    chain, leaf first). A file readable by group or others is refused, as it
    holds a private key.

    @param key: the configuration key the files came from, for errors.
    @raise ConfigErrors: naming each bad file.
    """
    errors: list[ConfigError] = []
    contexts: list[tuple[SSL.Context, list[str]]] = []
    for path in paths:
        data = read_file(path, errors, secret=True)
        if data is not None:
            loaded = _context(path, data, errors, key)
            if loaded is not None:
                contexts.append(loaded)
    if errors:
        raise ConfigErrors(tuple(errors))
    by_name: dict[str, SSL.Context] = {}
    for context, names in contexts:
        for name in names:
            by_name.setdefault(name, context)
    return SNIServerTLS(contexts[0][0], by_name)
