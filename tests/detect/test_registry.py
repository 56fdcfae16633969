"""
The built-in detector plugins: they provide L{IDetector}, have the documented
names and priorities, and the full registry detects every capture as its
protocol.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txgate.detection import PEEK_CAP, detect
from txgate.interfaces import NEED_MORE, NOT_MINE, Detected, IDetector
from txgate.plugins import discover
from txgate.testing import assert_provides

from .samples import TRAILERS, samples

EXPECTED = {
    "ms-turn": 10,
    "pseudo-ssl": 15,
    "tls": 20,
    "sip": 30,
    "http": 40,
    "stun": 50,
}


class RegistryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.registry = discover()
        self.builtin = {d.name: d for d in self.registry.detectors if d.name in EXPECTED}

    def test_plugins(self) -> None:
        """Each built-in detector is registered from its own plugins/txgate_detect_* module."""
        self.assertEqual({n: d.priority for n, d in self.builtin.items()}, EXPECTED)
        origins = {p.name: p.origin for p in self.registry.of_kind("detector")}
        for name, detector in self.builtin.items():
            assert_provides(self, IDetector, detector)
            self.assertRegex(origins[name], r"txgate_detect_\w+\.py$")

    def test_each_capture(self) -> None:
        """The registry's order detects each sample as its protocol, whole, by prefix and with more bytes."""
        detectors = self.registry.detectors
        for name, (data, protocol) in samples().items():
            verdict = detect(detectors, data)
            self.assertIsInstance(verdict, Detected, name)
            self.assertEqual(verdict.protocol, protocol, name)
            for i in range(len(data)):
                verdict = detect(detectors, data[:i])
                if verdict is not NEED_MORE:
                    self.assertEqual(verdict.protocol, protocol, f"{name}: prefix of {i} bytes")
            for trailer in TRAILERS:
                self.assertEqual(detect(detectors, data + trailer).protocol, protocol, f"{name} + {trailer!r}")

    def test_unknown(self) -> None:
        """Bytes nobody claims are C{tcp}; keep-alives alone wait, then end as C{tcp} at the cap."""
        detectors = self.registry.detectors
        self.assertEqual(detect(detectors, b"\xffgarbage").protocol, "tcp")
        self.assertIs(detect(detectors, b"\r\n\r\n"), NEED_MORE)
        self.assertEqual(detect(detectors, b"\r\n\r\n", final=True).protocol, "tcp")
        self.assertEqual(detect(detectors, b"\r\n" * (PEEK_CAP // 2)).protocol, "tcp")

    def test_plugins_never_raise(self) -> None:
        for name, detector in self.builtin.items():
            for data in (b"", b"\x00", b"\x16\x03\x01\xff\xff", b"\x80", b"SIP/2.0 ", bytes(range(256))):
                verdict = detector.detect(data)
                self.assertTrue(verdict is NEED_MORE or verdict is NOT_MINE or isinstance(verdict, Detected), name)
