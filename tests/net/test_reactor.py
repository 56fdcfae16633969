"""
Tests for L{txgate.net.reactor}: the workers' reactor, run in a process of
its own (a reactor is installed once per process) over real loopback
sockets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

import txgate

_SCRIPT = r"""
import json
from txgate.net.reactor import EPollReactor, install

reactor = install()
from twisted.internet import reactor as installed
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import globalLogBeginner

failures = []


def observe(event):
    failure = event.get("log_failure") or event.get("failure")  # the latter from twisted.python.log.err
    if failure is not None:
        failures.append(str(failure.value))


globalLogBeginner.beginLoggingTo([observe], redirectStandardIO=False)
results = {"installed": type(installed) is EPollReactor and installed is reactor}


class Echo(Protocol):
    def dataReceived(self, data):
        if data == b"boom":
            raise RuntimeError("boom in dataReceived")
        self.transport.write(data)


class Client(Protocol):
    def connectionMade(self):
        self.received = b""
        self.transport.write(self.factory.message)

    def dataReceived(self, data):
        self.received += data
        if self.received == self.factory.message:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        results[self.factory.message.decode()] = self.received.decode()
        if len(results) == 3:
            reactor.stop()


port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
for message in (b"hello", b"boom"):
    factory = ClientFactory.forProtocol(Client)
    factory.message = message
    reactor.connectTCP("127.0.0.1", port.getHost().port, factory)
reactor.callLater(10, reactor.stop)
reactor.run()
results["failures"] = failures
print(json.dumps(results))
"""


class ReactorTests(SynchronousTestCase):
    def test_dispatch(self) -> None:
        """
        Installed, it is the global reactor; it carries bytes both ways, and
        an exception in a protocol's C{dataReceived} is logged and closes
        that connection only.
        """
        root = os.path.dirname(os.path.dirname(os.path.abspath(txgate.__file__)))
        env = {**os.environ, "PYTHONPATH": root}
        out = subprocess.run(
            [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=60, env=env, check=True
        ).stdout
        results = json.loads(out.strip().splitlines()[-1])
        self.assertEqual(
            results,
            {"installed": True, "hello": "hello", "boom": "", "failures": ["boom in dataReceived"]},
        )
