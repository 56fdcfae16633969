"""
Proxy authentication end to end: C{twistd txgate forward} with a CPL policy
saying C{authenticate(corp)} and a C{[realm.corp]} htpasswd file, driven by
curl in front of nginx. What is asserted is what a client sees: 407 and its
challenge without credentials, 200 with them, and CRL and OCSP fetches
passing without any, as Windows needs (docs/operations.md, Authentication).
"""

from __future__ import annotations

import os
from typing import Any

import bcrypt
from twisted.trial.unittest import TestCase

from tests.auth.test_exempt import ocsp_request_der
from tests.e2e.harness import access_records, fetch, run_curl, start_nginx, start_txgate, wait_for_record

POLICY = """\
<proxy>
    authenticate(corp)
"""

CONFIG = """\
[txgate]
state_dir = "{{tmp}}/var"
access_log = "{{tmp}}/access.log"
access_log_format = "text"
policy = "{files}/policy.cpl"

[realm.corp]
htpasswd = "{files}/users.htpasswd"

[[service]]
name = "explicit"
kind = "explicit-http"
listen = "tcp:0:interface=127.0.0.1"
"""

CRL = b"0\x82 not really a CRL, but nginx does not mind"


class AuthenticationTests(TestCase):
    """
    C{authenticate(corp)} challenges every request except revocation
    fetches.
    """

    timeout = 60

    async def _start(self) -> tuple[Any, Any]:
        files = os.path.abspath(self.mktemp())
        os.makedirs(files)
        with open(os.path.join(files, "policy.cpl"), "w") as f:
            f.write(POLICY)
        with open(os.path.join(files, "users.htpasswd"), "wb") as f:
            f.write(b"# the corp realm\nalice:" + bcrypt.hashpw(b"secret", bcrypt.gensalt(4)) + b"\n")
        nginx = await start_nginx(self, root_files={"index.html": b"hello", "ca.crl": CRL})
        proxy = await start_txgate(self, CONFIG.format(files=files))
        return nginx, proxy

    async def test_challenge_and_credentials(self) -> None:
        """
        Without credentials curl gets 407 with C{Proxy-Authenticate: Basic
        realm="corp"}; with a wrong password 407 again; with alice's password
        200 and nginx's page; the access log records each, without the
        password.
        """
        nginx, proxy = await self._start()
        address = "http://%s:%d" % proxy.addresses["explicit"]
        url = nginx.url("/index.html")

        out, err, code = await run_curl(["--silent", "--show-error", "--include", "--proxy", address, url])
        self.assertEqual(code, 0, err)
        head = out.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        self.assertTrue(head.startswith("HTTP/1.1 407 "), head)
        self.assertIn('proxy-authenticate: Basic realm="corp"\r\n', head + "\r\n")

        wrong = await fetch(self, url, proxy=proxy.addresses["explicit"], extra=["--proxy-user", "alice:wrong-pw"])
        self.assertEqual(wrong.status, 407, wrong.stderr)

        right = await fetch(self, url, proxy=proxy.addresses["explicit"], extra=["--proxy-user", "alice:secret"])
        self.assertEqual((right.exit_code, right.status, right.body), (0, 200, b"hello"), right.stderr)

        await wait_for_record(proxy, lambda r: r["status"] == 200)
        records = access_records(proxy)
        self.assertEqual(
            [(r["status"], r["verdict"], r["reason"]) for r in records],
            [
                (407, "deny", "authentication required"),
                (407, "deny", "invalid credentials for realm corp"),
                (200, "allow", None),
            ],
        )
        with open(proxy.access_log_path, encoding="utf-8") as f:
            log = f.read()
        self.assertNotIn("wrong-pw", log)
        self.assertNotIn("secret", log)

    async def test_crl_without_credentials(self) -> None:
        """A CRL fetched through the proxy without credentials comes back 200, whole."""
        nginx, proxy = await self._start()
        result = await fetch(self, nginx.url("/ca.crl"), proxy=proxy.addresses["explicit"])
        self.assertEqual((result.exit_code, result.status, result.body), (0, 200, CRL), result.stderr)
        record = await wait_for_record(proxy, lambda r: r["method"] == "GET")
        self.assertEqual((record["status"], record["verdict"]), (200, "allow"))

    async def test_ocsp_post_without_credentials(self) -> None:
        """
        An OCSP POST (a real DER request) without credentials reaches nginx:
        whatever nginx answers a POST to a static server, it is not 407.
        """
        nginx, proxy = await self._start()
        der = os.path.abspath(self.mktemp())
        with open(der, "wb") as f:
            f.write(ocsp_request_der())
        result = await fetch(
            self,
            nginx.url("/ocsp"),
            proxy=proxy.addresses["explicit"],
            extra=["-H", "Content-Type: application/ocsp-request", "--data-binary", "@" + der],
        )
        self.assertEqual(result.exit_code, 0, result.stderr)
        self.assertNotIn(result.status, (0, 407))
        record = await wait_for_record(proxy, lambda r: r["method"] == "POST")
        self.assertEqual((record["verdict"], record["upstream"]), ("allow", "new"))
