# -*- test-case-name: tests.e2e.test_intercept -*-
"""
TLS origins and TLS clients for the end-to-end tests of SSL interception.

Every fixture here works on its own, without txgate (the C{FixtureTests} in
L{tests.e2e.test_intercept} prove it), so a failure seen through txgate is
txgate's:

    pki = make_origin_pki(directory)            # a test CA; valid, expired and
                                                # wrong-name certificates
    nginx = await start_nginx(self, pki=pki.valid, root_files={...})
    echo = await start_tls_echo(self, pki.valid)         # socat + tee: echoes, records
    reply = await tls_exchange(echo.address, b"...", cafile=pki.ca_pem_path,
                               proxy=proxy.addresses["explicit"])
    done = await s_client(["-connect", ..., "-proxy", ...])   # openssl s_client
    await start_sips_uas(self, topo, netns_pki.valid)    # sipp UAS behind socat TLS
    out, err, code = await run_sips_uac(self, topo, cafile)
    await start_turns_server(self, topo, netns_pki.valid)     # coturn with TLS
    out, err, code = await run_turns_client(topo, cafile)     # turnutils_uclient -S

Loopback fixtures listen on 127.0.0.1; the SIP and TURN ones live in the
server namespace of a L{tests.e2e.netns.Topology} on L{SERVER4}:443 so the
transparent service can intercept them.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import ssl
import subprocess
import time
import unittest
from typing import Iterable, Sequence

import attrs
from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import FailTest

from tests.e2e.harness import (
    LOOPBACK,
    STARTUP_TIMEOUT,
    Pki,
    _Child,
    _child_env,
    _free_port,
    _new_dir,
    _stop_child,
    _tail,
    read_http_head,
    require_tool,
    wait_for,
)
from tests.e2e.netns import SERVER4, Topology, run_in, start_in

__all__ = [
    "Completed",
    "OriginPki",
    "TlsEcho",
    "TlsExchange",
    "UNKNOWN_PAYLOAD",
    "common_name",
    "free_port",
    "http_get",
    "lost_packets",
    "netns_s_client",
    "make_origin_pki",
    "pem_certificates",
    "run_command",
    "run_sips_uac",
    "run_turns_client",
    "s_client",
    "start_listener",
    "start_sips_uas",
    "start_tls_echo",
    "start_turns_server",
    "tls_exchange",
]

SIPS_PORT = 443
"""Where the SIP-over-TLS and TURN-over-TLS servers listen on L{SERVER4}."""

SIP_PLAIN_PORT = 5070
"""Where sipp listens on 127.0.0.1 behind socat (in both namespaces)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for configs that need it up front)."""
    return _free_port()


# ---------------------------------------------------------------- certificates


@attrs.frozen
class OriginPki:
    """
    A test CA and three server certificates it signed, each a L{Pki} (the
    certificate file holds the leaf then the CA):

    @ivar valid: for C{dns_names} and C{ip_addresses}, valid now.
    @ivar expired: the same names, expired yesterday.
    @ivar wrong_name: valid now, but only for C{wrong.test} (no IP address).
    """

    directory: str
    ca_pem_path: str
    valid: Pki
    expired: Pki
    wrong_name: Pki


def make_origin_pki(
    directory: str,
    dns_names: Iterable[str] = ("origin.test", "localhost"),
    ip_addresses: Iterable[str] = (LOOPBACK,),
    crl_url: str | None = None,
) -> OriginPki:
    """
    Generate an L{OriginPki} into C{directory} (P-256 keys, PEM files, key
    files mode 0600). With C{crl_url}, the valid leaf carries it as its CRL
    Distribution Point and C{origin-ca.crl} (DER, empty, valid a week) is
    written beside the CA, for serving there.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    from txgate.testing import make_ca, make_server_cert, write_pem

    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)
    ca, ca_key = make_ca("txgate e2e origin CA", now - 30 * day, now + 60 * day)
    ca_pem_path = os.path.join(directory, "origin-ca.pem")
    write_pem(ca_pem_path, ca)

    def leaf(
        stem: str, dns: Sequence[str], ips: Sequence[str], start: datetime.datetime, end: datetime.datetime,
        cdp: str | None = None,
    ) -> Pki:
        cert, key = make_server_cert(ca, ca_key, dns, ips, not_before=start, not_after=end, crl_url=cdp)
        pki = Pki(ca_pem_path, os.path.join(directory, f"{stem}.pem"), os.path.join(directory, f"{stem}.key"))
        write_pem(pki.cert_path, cert, ca)
        write_pem(pki.key_path, key=key)
        return pki

    if crl_url is not None:
        crl = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca.subject)
            .last_update(now - day)
            .next_update(now + 7 * day)
            .add_extension(x509.CRLNumber(1), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        with open(os.path.join(directory, "origin-ca.crl"), "wb") as f:
            f.write(crl.public_bytes(serialization.Encoding.DER))
    dns_names, ip_addresses = list(dns_names), list(ip_addresses)
    return OriginPki(
        directory=directory,
        ca_pem_path=ca_pem_path,
        valid=leaf("valid", dns_names, ip_addresses, now - day, now + 30 * day, crl_url),
        expired=leaf("expired", dns_names, ip_addresses, now - 20 * day, now - day),
        wrong_name=leaf("wrong-name", ["wrong.test"], [], now - day, now + 30 * day),
    )


_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\r?\n?", re.S)


def pem_certificates(text: bytes) -> list:
    """Every PEM certificate in C{text} (e.g. C{s_client -showcerts} output), parsed, in order."""
    from cryptography import x509

    return [x509.load_pem_x509_certificate(m.group(0)) for m in _PEM_CERT.finditer(text)]


def common_name(name) -> str | None:
    """The CN of an C{x509.Name}, or C{None}."""
    from cryptography.x509.oid import NameOID

    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else None


# ---------------------------------------------------------------- processes


@attrs.frozen
class Completed:
    """What a command gave: its stdout, stderr and exit code (C{None} on timeout)."""

    argv: tuple[str, ...]
    stdout: bytes
    stderr: bytes
    code: int | None

    @property
    def text(self) -> str:
        """stdout and stderr as text, for assertions and failure messages."""
        return (self.stdout + b"\n" + self.stderr).decode("utf-8", "replace")

    def describe(self) -> str:
        return f"$ {' '.join(self.argv)}\nexit {self.code}\n{self.text[-4000:]}"


def _run_blocking(argv: Sequence[str], timeout: float, stdin: bytes, cwd: str | None) -> Completed:
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, timeout=timeout, env=_child_env(), cwd=cwd, check=False
        )
    except subprocess.TimeoutExpired as e:
        return Completed(tuple(argv), e.stdout or b"", (e.stderr or b"") + b"\n[timed out]", None)
    return Completed(tuple(argv), done.stdout, done.stderr, done.returncode)


def run_command(
    argv: Sequence[str], *, timeout: float = 30.0, stdin: bytes = b"", cwd: str | None = None
) -> defer.Deferred[Completed]:
    """
    Run C{argv} in a thread with C{stdin} as its whole input (then EOF),
    killed after C{timeout} seconds; fires with a L{Completed}.
    """
    return threads.deferToThread(_run_blocking, argv, timeout, stdin, cwd)


def s_client(args: Sequence[str], *, timeout: float = 30.0) -> defer.Deferred[Completed]:
    """
    C{openssl s_client ARGS} with stdin at EOF at once: it handshakes,
    prints what it saw (C{Verify return code: ...}) and quits.
    """
    openssl = require_tool("openssl")
    return run_command([openssl, "s_client", *args], timeout=timeout, stdin=b"Q\n")


def _listening(port: int, prefix: Sequence[str] = ()) -> bool:
    ss = require_tool("ss")
    done = subprocess.run([*prefix, ss, "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=15)
    return bool(done.stdout.strip())


@attrs.frozen
class Listener:
    """A server process started by L{start_listener}."""

    child: _Child
    transport: object
    port: int

    def output(self) -> str:
        return _tail(self.child.lines)


def start_listener(
    testcase: unittest.TestCase, argv: Sequence[str], port: int, what: str
) -> defer.Deferred[Listener]:
    """
    Start C{argv} (in this network namespace) and fire once something
    listens on TCP C{port} (checked with C{ss}, never by connecting: a
    one-shot server would spend its only accept on the probe). A cleanup
    stops it.
    """

    async def start() -> Listener:
        directory = _new_dir(testcase)
        child = _Child()
        transport = reactor.spawnProcess(child, argv[0], list(argv), env=_child_env(), path=directory)
        testcase.addCleanup(_stop_child, child, transport, what)
        await wait_for(
            lambda: (not child.running) or _listening(port),
            timeout=STARTUP_TIMEOUT,
            description=f"{what} to listen on port {port}",
        )
        if not child.running:
            raise FailTest(f"{what} exited ({child.describe_end()}); output:\n{_tail(child.lines)}")
        return Listener(child, transport, port)

    return defer.Deferred.fromCoroutine(start())


# ---------------------------------------------------------------- TLS echo ("unknown protocol")


UNKNOWN_PAYLOAD = b"\x00\x01hello-unknown"
"""What the unknown-protocol client sends after the handshake: no detector claims it."""


@attrs.frozen
class TlsEcho:
    """
    socat terminating TLS on 127.0.0.1:C{port} with an origin certificate and
    echoing the decrypted bytes back through C{tee}, which also appends them
    to C{record_path}: what the origin received, for every connection.
    """

    port: int
    record_path: str
    listener: Listener

    host = LOOPBACK

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def received(self) -> bytes:
        try:
            with open(self.record_path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""


def start_tls_echo(testcase: unittest.TestCase, pki: Pki) -> defer.Deferred[TlsEcho]:
    """Start a L{TlsEcho} serving C{pki}'s certificate on a free port."""
    socat = require_tool("socat")
    directory = _new_dir(testcase)
    record = os.path.join(directory, "received.bin")
    port = _free_port()
    argv = [
        socat,
        f"OPENSSL-LISTEN:{port},bind={LOOPBACK},reuseaddr,fork,cert={pki.cert_path},key={pki.key_path},verify=0",
        f"SYSTEM:tee -a {record}",
    ]
    return start_listener(testcase, argv, port, "socat tls echo").addCallback(
        lambda listener: TlsEcho(port, record, listener)
    )


@attrs.frozen
class TlsExchange:
    """
    What one TLS client connection gave.

    @ivar connect_status: the proxy's answer to CONNECT (C{None} when direct).
    @ivar error: the handshake's (or connection's) error text, C{None} if
        the handshake succeeded.
    @ivar certificate: the server's leaf (DER), when the handshake got one.
    @ivar echoed: application bytes read back after sending the payload.
    @ivar closed: whether the server closed before the read timeout.
    """

    connect_status: int | None
    error: str | None
    certificate: bytes | None
    echoed: bytes
    closed: bool

    @property
    def handshake_ok(self) -> bool:
        return self.error is None and (self.connect_status in (None, 200))

    def issuer_cn(self) -> str | None:
        if self.certificate is None:
            return None
        from cryptography import x509

        return common_name(x509.load_der_x509_certificate(self.certificate).issuer)


def _tls_exchange(
    target: tuple[str, int],
    payload: bytes,
    cafile: str | None,
    server_hostname: str | None,
    proxy: tuple[str, int] | None,
    read_timeout: float,
) -> TlsExchange:
    connect_to = proxy or target
    sock = socket.create_connection(connect_to, timeout=read_timeout)
    status: int | None = None
    try:
        if proxy is not None:
            authority = f"{target[0]}:{target[1]}"
            sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
            head, rest = read_http_head(sock)
            match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
            status = int(match.group(1)) if match else 0
            if status != 200 or rest:
                return TlsExchange(status, f"CONNECT answered {head[:200]!r} + {rest[:50]!r}", None, b"", False)
        context = ssl.create_default_context(cafile=cafile) if cafile else ssl._create_unverified_context()
        if cafile and server_hostname is None:
            context.check_hostname = False
        try:
            tls = context.wrap_socket(sock, server_hostname=server_hostname)
        except (ssl.SSLError, OSError) as e:
            return TlsExchange(status, f"{type(e).__name__}: {e}", None, b"", True)
        sock = tls
        certificate = tls.getpeercert(binary_form=True)
        if not payload:
            return TlsExchange(status, None, certificate, b"", False)
        try:
            tls.sendall(payload)
        except OSError:
            return TlsExchange(status, None, certificate, b"", True)
        echoed = bytearray()
        closed = False
        deadline = time.monotonic() + read_timeout
        while len(echoed) < len(payload):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            tls.settimeout(remaining)
            try:
                chunk = tls.recv(65536)
            except (TimeoutError, socket.timeout):
                break
            except (ssl.SSLError, OSError):
                closed = True
                break
            if not chunk:
                closed = True
                break
            echoed += chunk
        return TlsExchange(status, None, certificate, bytes(echoed), closed)
    finally:
        sock.close()


def tls_exchange(
    target: tuple[str, int],
    payload: bytes = b"",
    *,
    cafile: str | None,
    server_hostname: str | None = None,
    proxy: tuple[str, int] | None = None,
    read_timeout: float = 10.0,
) -> defer.Deferred[TlsExchange]:
    """
    In a thread: connect to C{target} (through an explicit proxy's CONNECT
    when C{proxy} is given), handshake TLS verifying against C{cafile}
    (C{None}: no verification, to look at what the server presents) and
    C{server_hostname} (also the SNI; C{None}: no SNI, no name check), send
    C{payload} and read until as many bytes came back, the server closed or
    C{read_timeout} passed.
    """
    return threads.deferToThread(_tls_exchange, target, payload, cafile, server_hostname, proxy, read_timeout)


# ---------------------------------------------------------------- SIP over TLS (netns)


def start_sips_uas(testcase: unittest.TestCase, topo: Topology, pki: Pki) -> defer.Deferred[None]:
    """
    In the server namespace: socat terminating TLS on L{SERVER4}:443 with
    C{pki} (one connection) in front of a sipp UAS answering one call on
    127.0.0.1:L{SIP_PLAIN_PORT}.
    """
    socat, sipp = require_tool("socat"), require_tool("sipp")

    async def start() -> None:
        await start_in(
            testcase, topo, topo.server,
            [socat, f"OPENSSL-LISTEN:{SIPS_PORT},bind={SERVER4},reuseaddr,cert={pki.cert_path},key={pki.key_path},verify=0",
             f"TCP:127.0.0.1:{SIP_PLAIN_PORT}"],
            SIPS_PORT, "socat tls server",
        )
        await start_in(
            testcase, topo, topo.server,
            [sipp, "-sn", "uas", "-t", "t1", "-i", "127.0.0.1", "-p", str(SIP_PLAIN_PORT), "-m", "1", "-nostdin"],
            SIP_PLAIN_PORT, "sipp uas",
        )

    return defer.Deferred.fromCoroutine(start())


def run_sips_uac(testcase: unittest.TestCase, topo: Topology, cafile: str) -> defer.Deferred[tuple[bytes, bytes, int]]:
    """
    In the client namespace: socat on 127.0.0.1:L{SIP_PLAIN_PORT} opening TLS
    to L{SERVER4}:443 and verifying the server against C{cafile} (name: the
    IP address), and one sipp UAC call through it. Fires with sipp's
    (stdout, stderr, exit code); 0 means the call completed.
    """
    socat, sipp = require_tool("socat"), require_tool("sipp")

    async def run() -> tuple[bytes, bytes, int]:
        await start_in(
            testcase, topo, topo.client,
            [socat, f"TCP-LISTEN:{SIP_PLAIN_PORT},bind=127.0.0.1,reuseaddr", f"OPENSSL:{SERVER4}:{SIPS_PORT},cafile={cafile}"],
            SIP_PLAIN_PORT, "socat tls client",
        )
        return await run_in(
            topo, topo.client,
            [sipp, "-sn", "uac", f"127.0.0.1:{SIP_PLAIN_PORT}", "-t", "t1", "-i", "127.0.0.1", "-m", "1",
             "-nostdin", "-timeout", "30s", "-timeout_error"],
        )

    return defer.Deferred.fromCoroutine(run())


# ---------------------------------------------------------------- TURN over TLS (netns)


def start_turns_server(testcase: unittest.TestCase, topo: Topology, pki: Pki) -> defer.Deferred[object]:
    """
    coturn in the server namespace: TLS on L{SERVER4}:443 with C{pki}, user
    C{alice:secret}, realm C{txgate.test}.
    """
    turnserver = require_tool("turnserver")
    directory = _new_dir(testcase)
    return start_in(
        testcase, topo, topo.server,
        [turnserver, "-n", f"--listening-ip={SERVER4}", f"--relay-ip={SERVER4}", f"--tls-listening-port={SIPS_PORT}",
         "--listening-port=3478", f"--cert={pki.cert_path}", f"--pkey={pki.key_path}", "--no-dtls",
         "--lt-cred-mech", "--user=alice:secret", "--realm=txgate.test", "--no-cli", "--log-file=stdout",
         f"--pidfile={directory}/turnserver.pid", "--allow-loopback-peers"],
        SIPS_PORT, "turnserver",
    )


def run_turns_client(topo: Topology) -> defer.Deferred[tuple[bytes, bytes, int]]:
    """
    C{turnutils_uclient -t -S} in the client namespace against
    L{SERVER4}:443 (5 messages). It does not verify the server's certificate
    (its C{-E} CA option changes nothing: measured with a wrong CA on coturn
    4.6), so check what the server presents with L{netns_s_client}.
    """
    uclient = require_tool("turnutils_uclient")
    return run_in(
        topo, topo.client,
        [uclient, "-t", "-S", "-y", "-u", "alice", "-w", "secret", "-p", str(SIPS_PORT),
         "-n", "5", "-m", "1", "-l", "100", SERVER4],
    )


def netns_s_client(topo: Topology, namespace: str, args: Sequence[str]) -> defer.Deferred[tuple[bytes, bytes, int]]:
    """C{openssl s_client ARGS} inside C{namespace}, stdin at EOF; fires with (stdout, stderr, exit code)."""
    openssl = require_tool("openssl")
    return run_in(topo, namespace, ["/bin/sh", "-c", 'exec "$0" s_client "$@" </dev/null', openssl, *args], timeout=30)


def lost_packets(output: bytes) -> int | None:
    """turnutils_uclient's "Total lost packets N", or C{None} if it never got that far."""
    match = re.search(rb"Total lost packets (\d+) ", output)
    return int(match.group(1)) if match else None



# ---------------------------------------------------------------- plain HTTP GET


def _http_get(url: str, timeout: float) -> tuple[int, dict[str, str], bytes]:
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def http_get(url: str, *, timeout: float = 10.0) -> defer.Deferred[tuple[int, dict[str, str], bytes]]:
    """
    In a thread: a direct (never proxied) GET of C{url}; fires with (status,
    lower-case headers, body). Connection errors fail the Deferred.
    """
    return threads.deferToThread(_http_get, url, timeout)
