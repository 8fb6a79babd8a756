"""End-to-end tests: a private Postfix and a private Unbound on loopback."""
