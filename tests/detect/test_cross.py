"""
Every detector against every other protocol's greeting: no detector claims
another protocol's bytes or any prefix of them, and none raises on anything.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txgate.detect import http, msturn, pseudossl, sip, stun, tls
from txgate.interfaces import NEED_MORE, NOT_MINE, Detected

from .samples import TRAILERS, samples

CORES = {
    "ssl": tls.detect,
    "ms-turn": msturn.detect,
    "pseudo-ssl": pseudossl.detect,
    "http": http.detect,
    "sip": sip.detect,
    "stun": stun.detect,
}
"""Each core detector by the protocol it claims."""

SAMPLE_BYTES = [data for data, _ in samples().values()]


class CrossTests(SynchronousTestCase):
    def test_no_foreign_claims(self) -> None:
        """No detector claims another protocol's sample, a prefix of it, or it with more bytes."""
        for name, (data, protocol) in samples().items():
            for claimed, detect in CORES.items():
                if claimed == protocol:
                    continue
                inputs = [data[:i] for i in range(len(data) + 1)] + [data + t for t in TRAILERS]
                for candidate in inputs:
                    verdict = detect(candidate)
                    self.assertFalse(
                        isinstance(verdict, Detected),
                        msg=f"{claimed} detector claimed {len(candidate)} bytes of {name}: {verdict!r}",
                    )

    def test_own_sample(self) -> None:
        """Each detector claims its own samples."""
        for name, (data, protocol) in samples().items():
            verdict = CORES[protocol](data)
            self.assertIsInstance(verdict, Detected, name)
            self.assertEqual(verdict.protocol, protocol, name)

    @given(st.binary(max_size=400))
    def test_never_raises(self, data: bytes) -> None:
        """Arbitrary bytes get a verdict from every detector, never an exception."""
        for claimed, detect in CORES.items():
            verdict = detect(data)
            self.assertTrue(
                verdict is NEED_MORE or verdict is NOT_MINE or isinstance(verdict, Detected), claimed
            )

    @given(st.sampled_from(SAMPLE_BYTES), st.integers(0, 2000), st.binary(min_size=1, max_size=8))
    def test_spliced(self, data: bytes, at: int, junk: bytes) -> None:
        """Samples with bytes overwritten somewhere never make a detector raise."""
        at %= len(data)
        mangled = data[:at] + junk + data[at + len(junk) :]
        for detect in CORES.values():
            detect(mangled)

    @given(st.sampled_from(SAMPLE_BYTES), st.integers(0, 2000))
    def test_prefix_never_claimed_by_others(self, data: bytes, cut: int) -> None:
        """At most one detector claims any prefix of a sample."""
        prefix = data[: cut % (len(data) + 1)]
        claims = [p for p, detect in CORES.items() if isinstance(detect(prefix), Detected)]
        self.assertLessEqual(len(claims), 1, claims)
