"""
Tests for L{txgate.pki}.
"""
