"""
SSL interception end to end (issue 5): what a user checks with real clients.

  - openssl s_client through the explicit proxy verifies the emulated leaf
    against C{<state>/ca/issuer.pem}, downloading the CRL from the CDP URL
    (C{-crl_check -crl_download}); without a CDP it cannot.
  - openssl ocsp asks the AIA responder: C{good}, then C{revoked} after
    C{txgate ca revoke}.
  - curl (HTTP/2 offered and HTTP/1.1) through CONNECT and through the
    transparent service: decrypted HTTP is logged per request as C{https}
    with the full URL.
  - SIP over TLS (socat + sipp) is handed to the SIP handler as C{sips};
    TURN over TLS (coturn) is relayed.
  - An unknown protocol inside TLS is tunneled as C{ssl}, or denied by
    C{DENY client.protocol=!ssl tunneled=yes} before the origin sees a byte.
  - An expired or wrong-name upstream is emulated under the untrusted issuer
    (the client's verification fails) unless policy says
    C{server.certificate.validate(no)}.
  - Two nodes sharing a keyring: a leaf minted by one verifies with the CRL
    served by the other.

C{FixtureTests} first proves every origin and client works without txgate.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID
from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase

from tests.e2e.harness import (
    _accepts,
    access_records,
    fetch,
    require_tool,
    start_nginx,
    start_txgate,
    wait_for,
    wait_for_record,
)
from tests.e2e.netns import PROXY_CLIENT_SIDE4, SERVER4, make_topology, netns_fetch, start_nginx_in
from tests.e2e.tls_origins import (
    UNKNOWN_PAYLOAD,
    common_name,
    free_port,
    http_get,
    lost_packets,
    make_origin_pki,
    netns_s_client,
    pem_certificates,
    run_command,
    run_sips_uac,
    run_turns_client,
    s_client,
    start_sips_uas,
    start_tls_echo,
    start_turns_server,
    tls_exchange,
)

HELLO = b"hello through the SSL interceptor\n" * 1000

INTERCEPT = "<ssl-intercept>\n    ssl.forward_proxy(yes)\n"
DENY_UNDETECTED = "<proxy>\n    DENY client.protocol=!ssl tunneled=yes\n"
# The client CONNECTs to 127.0.0.1 with SNI origin.test: policy's url.host is
# the name the client asked for when the destination is only an address.
# curl sends no SNI to an address, so its url.host is the address.
NO_VALIDATE_ORIGIN = (
    "<ssl>\n    url.host=origin.test server.certificate.validate(no)\n    url.host=127.0.0.1 server.certificate.validate(no)\n"
)

SIP_METHODS = {"REGISTER", "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "MESSAGE", "NOTIFY", "SUBSCRIBE"}
UNTRUSTED_PREFIX = "txgate untrusted issuer"


def intercept_config(testcase: TestCase, *services: dict[str, Any], ssl: dict[str, Any], policy: str = INTERCEPT) -> str:
    """
    A config with C{services}, an C{[ssl]} section of C{ssl} and C{policy}
    (CPL text, written to a file of its own); state in C{{tmp}/var}, a text
    access log in C{{tmp}/access.log}.
    """
    policy_dir = os.path.abspath(testcase.mktemp())
    os.makedirs(policy_dir)
    policy_path = os.path.join(policy_dir, "intercept.cpl")
    with open(policy_path, "w") as f:
        f.write(policy)
    lines = [
        "[txgate]",
        'state_dir = "{tmp}/var"',
        'access_log = "{tmp}/access.log"',
        'access_log_format = "text"',
        f"policy = {json.dumps(policy_path)}",
        "",
        "[ssl]",
    ]
    lines += [f"{k} = {json.dumps(v)}" for k, v in ssl.items()]
    for service in services:
        lines += ["", "[[service]]"] + [f"{k} = {json.dumps(v)}" for k, v in service.items()]
    return "\n".join(lines) + "\n"


def explicit(port: int = 0) -> dict[str, Any]:
    return {"name": "explicit", "kind": "explicit-http", "listen": f"tcp:{port}:interface=127.0.0.1"}


TRANSPARENT = {"name": "transparent4", "kind": "transparent", "listen": "tcp:0"}


def issuer_path(proxy: Any) -> str:
    return os.path.join(proxy.state_dir, "ca", "issuer.pem")


def sleep(seconds: float) -> Any:
    return task.deferLater(reactor, seconds, lambda: None)


def listener_up(port: int) -> Any:
    """Wait for something to accept on 127.0.0.1:C{port} (a crl_listen endpoint logs no "listening:" line we wait on)."""
    return wait_for(lambda: _accepts(("127.0.0.1", port)), timeout=10, description=f"a listener on 127.0.0.1:{port}")


def _urls(cert: x509.Certificate) -> dict[str, list[str]]:
    """The CDP, OCSP and caIssuers URLs of C{cert}."""
    found: dict[str, list[str]] = {"crl": [], "ocsp": [], "ca_issuers": []}
    try:
        cdp = cert.extensions.get_extension_for_oid(ExtensionOID.CRL_DISTRIBUTION_POINTS).value
        for point in cdp:
            found["crl"] += [n.value for n in point.full_name or () if isinstance(n, x509.UniformResourceIdentifier)]
    except x509.ExtensionNotFound:
        pass
    try:
        aia = cert.extensions.get_extension_for_oid(ExtensionOID.AUTHORITY_INFORMATION_ACCESS).value
        for access in aia:
            key = "ocsp" if access.access_method == AuthorityInformationAccessOID.OCSP else "ca_issuers"
            if isinstance(access.access_location, x509.UniformResourceIdentifier):
                found[key].append(access.access_location.value)
    except x509.ExtensionNotFound:
        pass
    return found


def _load_crl(data: bytes) -> x509.CertificateRevocationList:
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


# ---------------------------------------------------------------- fixtures alone


class FixtureTests(TestCase):
    """
    Every origin and client used below works without txgate, so a failure
    through txgate is txgate's.
    """

    timeout = 120

    def _pki(self, **kwargs: Any) -> Any:
        return make_origin_pki(os.path.abspath(self.mktemp()), **kwargs)

    async def test_certificates(self) -> None:
        """openssl verify: the valid leaf verifies for its names, the expired and wrong-name ones do not."""
        openssl = require_tool("openssl")
        pki = self._pki()
        base = [openssl, "verify", "-CAfile", pki.ca_pem_path]
        for name, args in (("dns", ["-verify_hostname", "origin.test"]), ("ip", ["-verify_ip", "127.0.0.1"])):
            done = await run_command([*base, *args, pki.valid.cert_path])
            self.assertEqual(done.code, 0, f"{name}: {done.describe()}")
        done = await run_command([*base, pki.expired.cert_path])
        self.assertNotEqual(done.code, 0)
        self.assertIn("certificate has expired", done.text)
        done = await run_command([*base, "-verify_hostname", "origin.test", pki.wrong_name.cert_path])
        self.assertNotEqual(done.code, 0)
        self.assertIn("hostname mismatch", done.text)

    async def test_nginx_origins(self) -> None:
        """
        nginx serves the valid certificate (curl verifies it with the origin
        CA, by IP address), and curl rejects the expired and wrong-name ones.
        """
        pki = self._pki()
        valid = await start_nginx(self, pki=pki.valid, root_files={"hello.bin": HELLO})
        self.assertEqual(valid.ca_pem_path, pki.ca_pem_path)
        result = await fetch(self, valid.url("/hello.bin"), extra=["--cacert", pki.ca_pem_path])
        self.assertEqual((result.exit_code, result.status, result.body), (0, 200, HELLO), result.stderr)
        for leaf, words in ((pki.expired, "expired"), (pki.wrong_name, "127.0.0.1")):
            origin = await start_nginx(self, pki=leaf, root_files={"hello.bin": HELLO})
            result = await fetch(self, origin.url("/hello.bin"), extra=["--cacert", pki.ca_pem_path])
            self.assertEqual(result.exit_code, 60, result.stderr)  # peer certificate cannot be authenticated
            self.assertIn(words, result.stderr)

    async def test_s_client_direct(self) -> None:
        """openssl s_client verifies the nginx origin with the origin CA (the shape the proxied run uses)."""
        pki = self._pki()
        origin = await start_nginx(self, pki=pki.valid, root_files={"hello.bin": HELLO})
        done = await s_client(
            ["-connect", origin.authority, "-servername", "origin.test", "-CAfile", pki.ca_pem_path,
             "-verify_return_error", "-showcerts"]
        )
        self.assertEqual(done.code, 0, done.describe())
        self.assertIn("Verify return code: 0 (ok)", done.text)
        self.assertEqual(common_name(pem_certificates(done.stdout)[0].subject), "origin.test")

    async def test_s_client_crl_download_direct(self) -> None:
        """
        openssl s_client -crl_check -crl_download works on this machine: it
        fetches the CRL from a leaf's CDP (served here by twisted.web) and
        verifies; a leaf without a CDP fails with "unable to get
        certificate CRL" (what the no-CDP test through txgate expects).
        """
        from twisted.web import server, static

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        port = reactor.listenTCP(0, server.Site(static.File(directory)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/origin-ca.crl"
        pki = make_origin_pki(directory, crl_url=url)
        with_cdp = await start_nginx(self, pki=pki.valid, root_files={"hello.bin": HELLO})
        args = ["-CAfile", pki.ca_pem_path, "-crl_check", "-crl_download", "-verify_return_error", "-brief"]
        done = await s_client(["-connect", with_cdp.authority, "-servername", "origin.test", *args])
        self.assertEqual(done.code, 0, done.describe())
        self.assertIn("Verification: OK", done.text)
        # The offline check the shared-keyring test uses: verify with a CRL file.
        crl_pem = os.path.join(directory, "origin-ca.crl.pem")
        with open(os.path.join(directory, "origin-ca.crl"), "rb") as f, open(crl_pem, "wb") as out:
            out.write(_load_crl(f.read()).public_bytes(serialization.Encoding.PEM))
        verify = await run_command(
            [require_tool("openssl"), "verify", "-crl_check", "-CAfile", pki.ca_pem_path, "-CRLfile", crl_pem,
             pki.valid.cert_path]
        )
        self.assertEqual(verify.code, 0, verify.describe())
        without_cdp = await start_nginx(self, pki=make_origin_pki(os.path.join(directory, "other")).valid)
        done = await s_client(["-connect", without_cdp.authority, "-servername", "origin.test",
                               "-CAfile", os.path.join(directory, "other", "origin-ca.pem"), *args[2:]])
        self.assertNotEqual(done.code, 0, done.describe())
        self.assertIn("unable to get certificate CRL", done.text, done.describe())

    async def test_tls_echo(self) -> None:
        """The socat TLS echo returns the unknown payload and records it."""
        pki = self._pki()
        echo = await start_tls_echo(self, pki.valid)
        reply = await tls_exchange(echo.address, UNKNOWN_PAYLOAD, cafile=pki.ca_pem_path)
        self.assertTrue(reply.handshake_ok, reply)
        self.assertEqual(reply.echoed, UNKNOWN_PAYLOAD)
        await wait_for(lambda: echo.received() == UNKNOWN_PAYLOAD, timeout=5, description="the echo's record")

    async def test_sips_direct(self) -> None:
        """In the namespaces, no txgate: a sipp call over socat TLS completes, the server verified."""
        topo = make_topology(self)
        pki = self._pki(dns_names=("sip.test",), ip_addresses=(SERVER4,))
        await start_sips_uas(self, topo, pki.valid)
        out, err, code = await run_sips_uac(self, topo, pki.ca_pem_path)
        self.assertEqual(code, 0, f"sipp uac failed: {out[-2000:]!r} {err[-2000:]!r}")

    async def test_turns_direct(self) -> None:
        """In the namespaces, no txgate: turnutils_uclient -S allocates and relays over TLS to coturn."""
        topo = make_topology(self)
        pki = self._pki(dns_names=("turn.test",), ip_addresses=(SERVER4,))
        await start_turns_server(self, topo, pki.valid)
        out, err, code = await run_turns_client(topo)
        self.assertEqual(code, 0, f"turnutils_uclient failed: {out[-2000:]!r} {err[-2000:]!r}")
        lost = lost_packets(out + err)
        self.assertIsNotNone(lost, out[-2000:])
        self.assertLess(lost, 20)  # -S drops a few even directly (see test_lync)
        out, err, code = await netns_s_client(
            topo, topo.client, ["-connect", f"{SERVER4}:443", "-CAfile", pki.ca_pem_path, "-verify_return_error"]
        )
        self.assertEqual(code, 0, f"{out[-2000:]!r} {err[-2000:]!r}")
        self.assertIn(b"Verify return code: 0 (ok)", out)


# ---------------------------------------------------------------- explicit proxy


class ExplicitInterceptTests(TestCase):
    """Interception behind CONNECT on the explicit service, on loopback."""

    timeout = 120

    async def _start(
        self, *, ssl: dict[str, Any] | None = None, policy: str = INTERCEPT, leaf: str = "valid", port: int = 0
    ) -> tuple[Any, Any, Any]:
        pki = make_origin_pki(os.path.abspath(self.mktemp()))
        origin = await start_nginx(self, pki=getattr(pki, leaf), root_files={"hello.bin": HELLO})
        settings = {"upstream_ca_bundle": pki.ca_pem_path, **(ssl or {})}
        proxy = await start_txgate(self, intercept_config(self, explicit(port), ssl=settings, policy=policy))
        await wait_for(lambda: os.path.exists(issuer_path(proxy)), timeout=5, description="issuer.pem")
        return pki, origin, proxy

    def _proxy_arg(self, proxy: Any) -> str:
        host, port = proxy.addresses["explicit"]
        return f"{host}:{port}"

    async def _leaf(self, proxy: Any, origin: Any) -> tuple[x509.Certificate, str]:
        """The leaf txgate presents for the origin (s_client -showcerts), also saved as PEM."""
        done = await s_client(
            ["-connect", origin.authority, "-servername", "origin.test", "-proxy", self._proxy_arg(proxy),
             "-CAfile", issuer_path(proxy), "-showcerts"]
        )
        certs = pem_certificates(done.stdout)
        self.assertTrue(certs, done.describe() + "\n" + proxy.output())
        path = os.path.join(os.path.abspath(self.mktemp()) + "-leaf.pem")
        with open(path, "wb") as f:
            f.write(certs[0].public_bytes(serialization.Encoding.PEM))
        return certs[0], path

    async def test_s_client_crl_download(self) -> None:
        """
        s_client through the proxy verifies the emulated leaf against
        issuer.pem and checks its revocation with the CRL it downloads
        itself (directly, not through the proxy) from the leaf's CDP: the
        dedicated CRL listener named by crl_host.
        """
        crl_port = free_port()
        crl_host = f"127.0.0.1:{crl_port}"
        pki, origin, proxy = await self._start(
            ssl={"crl_host": crl_host, "crl_listen": f"tcp:{crl_port}:interface=127.0.0.1"}
        )
        await listener_up(crl_port)
        done = await s_client(
            ["-connect", origin.authority, "-servername", "origin.test", "-proxy", self._proxy_arg(proxy),
             "-CAfile", issuer_path(proxy), "-crl_check", "-crl_download", "-verify_return_error", "-brief"]
        )
        self.assertEqual(done.code, 0, done.describe() + "\n" + proxy.output())
        self.assertIn("Verification: OK", done.text)
        leaf, _ = await self._leaf(proxy, origin)
        self.assertEqual(_urls(leaf)["crl"], [f"http://{crl_host}/txgate.crl"])

    async def test_crl_through_explicit_service(self) -> None:
        """
        With crl_host unset, the leaf's CDP, OCSP and caIssuers URLs name the
        explicit service's own address; curl -x fetching the CDP URL through
        that service gets the CRL signed by the issuer, with a CRL content
        type, without any proxy authentication.
        """
        port = free_port()
        pki, origin, proxy = await self._start(port=port)
        leaf, _ = await self._leaf(proxy, origin)
        self.assertEqual(
            _urls(leaf),
            {
                "crl": [f"http://127.0.0.1:{port}/txgate.crl"],
                "ocsp": [f"http://127.0.0.1:{port}/ocsp"],
                "ca_issuers": [f"http://127.0.0.1:{port}/issuer.crt"],
            },
        )
        headers_path = os.path.abspath(self.mktemp())
        result = await fetch(
            self, f"http://127.0.0.1:{port}/txgate.crl", proxy=proxy.addresses["explicit"],
            extra=["--dump-header", headers_path],
        )
        self.assertEqual((result.exit_code, result.status), (0, 200), result.stderr + proxy.output())
        with open(headers_path, "rb") as f:
            self.assertRegex(f.read().lower(), rb"\ncontent-type: application/pkix-crl")
        crl = _load_crl(result.body)
        with open(issuer_path(proxy), "rb") as f:
            issuer = x509.load_pem_x509_certificate(f.read())
        self.assertEqual(crl.issuer, issuer.subject)
        self.assertTrue(crl.is_signature_valid(issuer.public_key()))

    async def test_s_client_without_cdp(self) -> None:
        """With crl_distribution_point = false the leaf has no CDP, so -crl_check -crl_download fails."""
        pki, origin, proxy = await self._start(ssl={"crl_distribution_point": False})
        done = await s_client(
            ["-connect", origin.authority, "-servername", "origin.test", "-proxy", self._proxy_arg(proxy),
             "-CAfile", issuer_path(proxy), "-crl_check", "-crl_download", "-verify_return_error", "-brief"]
        )
        self.assertNotEqual(done.code, 0, done.describe())
        self.assertIn("unable to get certificate CRL", done.text, done.describe())

    async def test_ocsp_good_then_revoked(self) -> None:
        """
        openssl ocsp at the dedicated listener says good for a minted leaf;
        after `txgate ca revoke SERIAL` it says revoked, and the CRL lists it.
        """
        crl_port = free_port()
        crl_host = f"127.0.0.1:{crl_port}"
        pki, origin, proxy = await self._start(
            ssl={"crl_host": crl_host, "crl_listen": f"tcp:{crl_port}:interface=127.0.0.1", "ocsp": True}
        )
        await listener_up(crl_port)
        leaf, leaf_path = await self._leaf(proxy, origin)
        self.assertEqual(_urls(leaf)["ocsp"], [f"http://{crl_host}/ocsp"])
        openssl = require_tool("openssl")
        issuer = issuer_path(proxy)
        ocsp = [openssl, "ocsp", "-issuer", issuer, "-cert", leaf_path, "-url", f"http://{crl_host}/ocsp",
                "-CAfile", issuer]
        done = await run_command(ocsp)
        self.assertEqual(done.code, 0, done.describe() + "\n" + proxy.output())
        self.assertIn(f"{leaf_path}: good", done.text)

        txgate = os.path.join(os.path.dirname(sys.executable), "txgate")
        serial = format(leaf.serial_number, "x")
        revoke = await run_command([txgate, "ca", "revoke", serial, "--config", proxy.config_path], cwd=proxy.directory)
        self.assertEqual(revoke.code, 0, revoke.describe())

        async def revoked() -> bool:
            done = await run_command(ocsp)
            return f"{leaf_path}: revoked" in done.text

        for _ in range(30):
            if await revoked():
                break
            await sleep(0.5)
        else:
            self.fail("OCSP never said revoked: " + (await run_command(ocsp)).describe())
        status, headers, body = await http_get(f"http://{crl_host}/txgate.crl")
        self.assertEqual(status, 200)
        self.assertIsNotNone(_load_crl(body).get_revoked_certificate_by_serial_number(leaf.serial_number))

    async def _curl(self, proxy: Any, origin: Any, *flags: str) -> Any:
        return await fetch(
            self, origin.url("/hello.bin"), proxy=proxy.addresses["explicit"],
            extra=["--cacert", issuer_path(proxy), *flags],
        )

    async def test_curl_http2_offered_and_http1(self) -> None:
        """
        curl through CONNECT, offering h2 then only HTTP/1.1, trusts the
        emulated leaf and gets the file; each request is logged as https
        with its full URL, not tunneled.
        """
        pki, origin, proxy = await self._start()
        for flag in ("--http2", "--http1.1"):
            result = await self._curl(proxy, origin, flag)
            self.assertEqual((result.exit_code, result.status), (0, 200), flag + result.stderr + proxy.output())
            self.assertEqual(result.body, HELLO, flag)
        url = origin.url("/hello.bin")
        await wait_for(
            lambda: len([r for r in access_records(proxy) if r["target"] == url]) >= 2,
            timeout=10, description="two records of the decrypted GETs",
        )
        for record in [r for r in access_records(proxy) if r["target"] == url]:
            self.assertEqual(
                (record["method"], record["client_protocol"], record["tunneled"], record["status"], record["verdict"]),
                ("GET", "https", False, 200, "allow"),
                record,
            )
        self.assertEqual(proxy.tracebacks(), [])

    async def test_unknown_protocol_tunneled(self) -> None:
        """
        Bytes no detector knows, inside intercepted TLS, are tunneled: the
        origin echoes them and the record says ssl, tunneled.
        """
        pki = make_origin_pki(os.path.abspath(self.mktemp()))
        echo = await start_tls_echo(self, pki.valid)
        proxy = await start_txgate(
            self, intercept_config(self, explicit(), ssl={"upstream_ca_bundle": pki.ca_pem_path})
        )
        await wait_for(lambda: os.path.exists(issuer_path(proxy)), timeout=5, description="issuer.pem")
        reply = await tls_exchange(echo.address, UNKNOWN_PAYLOAD, cafile=issuer_path(proxy), proxy=proxy.addresses["explicit"])
        self.assertTrue(reply.handshake_ok, f"{reply}\n{proxy.output()}")
        self.assertEqual(reply.echoed, UNKNOWN_PAYLOAD)
        self.assertNotEqual(reply.issuer_cn(), "txgate e2e origin CA")  # intercepted, not passed through
        self.assertEqual(echo.received(), UNKNOWN_PAYLOAD)
        record = await wait_for_record(proxy, lambda r: r["target"] == f"127.0.0.1:{echo.port}" and r["tunneled"])
        self.assertEqual((record["client_protocol"], record["verdict"]), ("ssl", "allow"), record)

    async def test_unknown_protocol_denied(self) -> None:
        """
        With DENY client.protocol=!ssl tunneled=yes the same stream is
        denied: nothing comes back, the origin never sees the payload, and
        the record says deny.
        """
        pki = make_origin_pki(os.path.abspath(self.mktemp()))
        echo = await start_tls_echo(self, pki.valid)
        proxy = await start_txgate(
            self,
            intercept_config(self, explicit(), ssl={"upstream_ca_bundle": pki.ca_pem_path}, policy=INTERCEPT + DENY_UNDETECTED),
        )
        await wait_for(lambda: os.path.exists(issuer_path(proxy)), timeout=5, description="issuer.pem")
        reply = await tls_exchange(echo.address, UNKNOWN_PAYLOAD, cafile=issuer_path(proxy), proxy=proxy.addresses["explicit"])
        # Intercepted (the handshake verified against issuer.pem), then denied.
        self.assertTrue(reply.handshake_ok, f"{reply}\n{proxy.output()}")
        self.assertEqual(reply.echoed, b"", reply)
        record = await wait_for_record(proxy, lambda r: r["verdict"] == "deny")
        self.assertNotIn(UNKNOWN_PAYLOAD, echo.received())
        await sleep(1.0)  # nothing arrives late either
        self.assertNotIn(UNKNOWN_PAYLOAD, echo.received())
        self.assertIn(str(echo.port), record["target"] or "", record)

    async def _chain_check(self, proxy: Any, origin: Any) -> Any:
        """s_client through C{proxy}: does the presented chain verify against issuer.pem? (No name check.)"""
        return await s_client(
            ["-connect", origin.authority, "-servername", "origin.test", "-proxy", self._proxy_arg(proxy),
             "-CAfile", issuer_path(proxy), "-verify_return_error", "-brief"]
        )

    async def _presented_issuer(self, proxy: Any, origin: Any) -> str:
        seen = await tls_exchange(origin.address, cafile=None, proxy=proxy.addresses["explicit"], server_hostname="origin.test")
        self.assertIsNotNone(seen.certificate, f"{seen}\n{proxy.output()}")
        return seen.issuer_cn() or ""

    async def _untrusted(self, leaf: str) -> Any:
        """
        Through a proxy that validates the upstream: curl fails, the chain
        does not verify against issuer.pem, and the leaf's issuer is the
        untrusted one. Returns the origin, for the validate(no) half.
        """
        pki, origin, proxy = await self._start(leaf=leaf)
        result = await self._curl(proxy, origin)
        self.assertEqual(result.exit_code, 60, result.stderr + proxy.output())  # cannot authenticate the peer
        self.assertEqual(result.body, b"")
        done = await self._chain_check(proxy, origin)
        self.assertNotEqual(done.code, 0, done.describe())
        issuer = await self._presented_issuer(proxy, origin)
        self.assertTrue(issuer.startswith(UNTRUSTED_PREFIX), f"{issuer!r}\n{proxy.output()}")

        # The same origin, validation off for its host: the leaf comes from the trusted issuer.
        proxy = await start_txgate(
            self,
            intercept_config(
                self, explicit(), ssl={"upstream_ca_bundle": pki.ca_pem_path}, policy=INTERCEPT + NO_VALIDATE_ORIGIN
            ),
        )
        await wait_for(lambda: os.path.exists(issuer_path(proxy)), timeout=5, description="issuer.pem")
        done = await self._chain_check(proxy, origin)
        self.assertEqual(done.code, 0, done.describe() + "\n" + proxy.output())
        self.assertIn("Verification: OK", done.text)
        issuer = await self._presented_issuer(proxy, origin)
        self.assertFalse(issuer.startswith(UNTRUSTED_PREFIX), issuer)
        return proxy, origin

    async def test_expired_upstream(self) -> None:
        """
        An expired upstream certificate: curl fails on the untrusted
        issuer's leaf; with server.certificate.validate(no) the leaf verifies
        and curl gets the file.
        """
        proxy, origin = await self._untrusted("expired")
        result = await self._curl(proxy, origin)
        self.assertEqual((result.exit_code, result.status), (0, 200), result.stderr + proxy.output())
        self.assertEqual(result.body, HELLO)

    async def test_wrong_name_upstream(self) -> None:
        """
        A wrong-name upstream certificate: the same, except that with
        validate(no) only the chain is checked (s_client): the emulated leaf
        copies the upstream's names (wrong.test), so a client checking the
        name still refuses it, as it would without a proxy.
        """
        await self._untrusted("wrong_name")


# ---------------------------------------------------------------- transparent (network namespaces)


class TransparentInterceptTests(TestCase):
    """curl, sipp and turnutils in the client namespace; txgate intercepting in the proxy namespace."""

    timeout = 150

    async def _setup(self, bundle: str) -> tuple[Any, Any]:
        topo = make_topology(self)
        ssl = {"upstream_ca_bundle": bundle, "crl_host": f"{PROXY_CLIENT_SIDE4}:80"}
        proxy = await start_txgate(self, intercept_config(self, TRANSPARENT, ssl=ssl), prefix=topo.exec_prefix(topo.proxy))
        topo.redirect(proxy.addresses["transparent4"][1], None)
        await wait_for(lambda: os.path.exists(issuer_path(proxy)), timeout=5, description="issuer.pem")
        return topo, proxy

    async def test_curl_https(self) -> None:
        """curl --cacert issuer.pem through the transparent service: the file, and an https record with the URL."""
        topo = make_topology(self)
        nginx = await start_nginx_in(self, topo, {"hello.bin": HELLO})
        ssl = {"upstream_ca_bundle": nginx.ca_pem_path, "crl_host": f"{PROXY_CLIENT_SIDE4}:80"}
        proxy = await start_txgate(self, intercept_config(self, TRANSPARENT, ssl=ssl), prefix=topo.exec_prefix(topo.proxy))
        topo.redirect(proxy.addresses["transparent4"][1], None)
        await wait_for(lambda: os.path.exists(issuer_path(proxy)), timeout=5, description="issuer.pem")
        result = await netns_fetch(
            self, topo.client, "https://origin.test/hello.bin",
            extra=["--resolve", f"origin.test:443:{SERVER4}", "--cacert", issuer_path(proxy)],
        )
        self.assertEqual((result.exit_code, result.status), (0, 200), result.stderr + proxy.output())
        self.assertEqual(result.body, HELLO)
        record = await wait_for_record(proxy, lambda r: r["target"] == "https://origin.test/hello.bin")
        self.assertEqual(
            (record["method"], record["client_protocol"], record["tunneled"], record["status"]),
            ("GET", "https", False, 200),
            record,
        )

    async def test_sip_over_tls(self) -> None:
        """
        A sipp call over socat TLS, verified against issuer.pem, completes
        through interception; the SIP handler logs its methods as sips.
        """
        pki = make_origin_pki(os.path.abspath(self.mktemp()), dns_names=("sip.test",), ip_addresses=(SERVER4,))
        topo, proxy = await self._setup(pki.ca_pem_path)
        await start_sips_uas(self, topo, pki.valid)
        out, err, code = await run_sips_uac(self, topo, issuer_path(proxy))
        self.assertEqual(code, 0, f"sipp uac failed: {out[-2000:]!r} {err[-2000:]!r}\n{proxy.output()}")
        record = await wait_for_record(proxy, lambda r: r["client_protocol"] == "sips")
        self.assertEqual(record["tunneled"], False, record)
        # The SIP handler logs each message it carries, with its method.
        logged = [line for line in proxy.output().splitlines() if " sip client " in line]
        methods = {word for line in logged for word in line.split() if word in SIP_METHODS}
        self.assertIn("INVITE", methods, proxy.output())

    async def test_turn_over_tls(self) -> None:
        """
        turnutils_uclient -S allocates and relays through interception (and,
        since it does not verify, s_client checks the intercepted server
        verifies against issuer.pem); the record is not a tunnel.
        """
        pki = make_origin_pki(os.path.abspath(self.mktemp()), dns_names=("turn.test",), ip_addresses=(SERVER4,))
        topo, proxy = await self._setup(pki.ca_pem_path)
        await start_turns_server(self, topo, pki.valid)
        out, err, code = await run_turns_client(topo)
        self.assertEqual(code, 0, f"turnutils_uclient failed: {out[-2000:]!r} {err[-2000:]!r}\n{proxy.output()}")
        lost = lost_packets(out + err)
        self.assertIsNotNone(lost, out[-2000:])
        self.assertLess(lost, 20)
        record = await wait_for_record(
            proxy, lambda r: r["target"] == f"{SERVER4}:443" and not r["tunneled"], description="a relayed (untunneled) record"
        )
        self.assertNotIn(record["client_protocol"], ("ssl", "tcp"), record)
        s_out, s_err, s_code = await netns_s_client(
            topo, topo.client, ["-connect", f"{SERVER4}:443", "-CAfile", issuer_path(proxy), "-verify_return_error"]
        )
        self.assertEqual(s_code, 0, f"{s_out[-2000:]!r} {s_err[-2000:]!r}\n{proxy.output()}")
        self.assertIn(b"Verify return code: 0 (ok)", s_out)


# ---------------------------------------------------------------- two nodes, one keyring


class SharedKeyringTests(TestCase):
    """Two txgate nodes sharing one issuer keyring."""

    timeout = 120

    async def test_leaf_from_a_verifies_with_crl_from_b(self) -> None:
        """
        A leaf minted by node A verifies (openssl verify -crl_check) with
        A's issuer.pem and the CRL served by node B.
        """
        openssl = require_tool("openssl")
        pki = make_origin_pki(os.path.abspath(self.mktemp()))
        origin = await start_nginx(self, pki=pki.valid, root_files={"hello.bin": HELLO})
        port_a, port_b = free_port(), free_port()
        node_a = await start_txgate(
            self,
            intercept_config(self, explicit(), ssl={
                "upstream_ca_bundle": pki.ca_pem_path, "crl_host": f"127.0.0.1:{port_a}",
                "crl_listen": f"tcp:{port_a}:interface=127.0.0.1",
            }),
        )
        await wait_for(lambda: os.path.exists(issuer_path(node_a)), timeout=5, description="issuer.pem")
        ca_dir = os.path.dirname(issuer_path(node_a))
        node_b = await start_txgate(
            self,
            intercept_config(self, explicit(), ssl={
                "upstream_ca_bundle": pki.ca_pem_path, "crl_host": f"127.0.0.1:{port_b}",
                "crl_listen": f"tcp:{port_b}:interface=127.0.0.1",
                "issuer_cert": os.path.join(ca_dir, "issuer.pem"), "issuer_key": os.path.join(ca_dir, "issuer.key"),
            }),
        )
        host, port = node_a.addresses["explicit"]
        done = await s_client(
            ["-connect", origin.authority, "-servername", "origin.test", "-proxy", f"{host}:{port}",
             "-CAfile", issuer_path(node_a), "-showcerts"]
        )
        certs = pem_certificates(done.stdout)
        self.assertTrue(certs, done.describe() + "\n" + node_a.output())
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        leaf_path = os.path.join(directory, "leaf.pem")
        with open(leaf_path, "wb") as f:
            f.write(certs[0].public_bytes(serialization.Encoding.PEM))
        await listener_up(port_b)
        status, _, body = await http_get(f"http://127.0.0.1:{port_b}/txgate.crl")
        self.assertEqual(status, 200, node_b.output())
        crl_path = os.path.join(directory, "b.crl.pem")
        with open(crl_path, "wb") as f:
            f.write(_load_crl(body).public_bytes(serialization.Encoding.PEM))
        verify = await run_command(
            [openssl, "verify", "-crl_check", "-CAfile", issuer_path(node_a), "-CRLfile", crl_path, leaf_path]
        )
        self.assertEqual(verify.code, 0, verify.describe())
        self.assertIn(f"{leaf_path}: OK", verify.text)
