"""
End-to-end tests: real C{twistd txgate} processes, real clients (curl, plain
sockets) and real origins (nginx, a twisted.web echo origin), all on loopback.
L{tests.e2e.harness} starts and stops them.
"""
