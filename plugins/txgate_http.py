"""
Built-in handoff: plain HTTP found inside a tunnel or on a transparent port
(C{client.protocol=http}, C{tunneled=no}).
"""

from txgate.net.httphandler import HTTPHandoff

http = HTTPHandoff()
