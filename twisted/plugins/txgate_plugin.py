"""
The twistd entry point: C{twistd txgate forward} and C{twistd txgate reverse}.
"""

from twisted.application.service import ServiceMaker

txgate = ServiceMaker(
    "txgate",
    "txgate.tap",
    "A proxy for Lync / Skype for Business and everything else on port 443.",
    "txgate",
)
