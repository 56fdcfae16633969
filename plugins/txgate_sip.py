"""
Built-in handoff: SIP and SIP inside intercepted TLS
(C{client.protocol=sip} or C{sips}, C{tunneled=no}).
"""

from txgate.net.sip import SipHandoff

sip = SipHandoff()
