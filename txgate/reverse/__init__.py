"""
Reverse mode's pure cores: what a virtual service allows (hosts, paths),
how requests are checked before they reach a real server, which real server
gets them (scheduling, persistence) and how health checks change that.

Nothing here touches a reactor; C{txgate.net.reverse} moves the bytes.
"""
