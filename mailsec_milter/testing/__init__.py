"""Test and benchmark helpers; never imported by the daemon itself."""
