"""Tests for txgate.sip."""
