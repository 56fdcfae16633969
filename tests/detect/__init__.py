"""
Tests for the protocol detectors (L{txgate.detect}) and their plugins, from
real byte captures (see captures/README.md).
"""
