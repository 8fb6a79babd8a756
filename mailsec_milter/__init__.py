"""mailsec-milter: inbound mail authentication (SPF, DKIM, DMARC, ARC, TLS status) as a milter.

Start at README.md; docs/DESIGN.md maps each module to its job.
"""

__version__ = "0.1.0"
