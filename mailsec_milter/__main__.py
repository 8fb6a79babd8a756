"""``python -m mailsec_milter`` is the ``mailsec-milter`` command."""

import sys

from .cli import main

sys.exit(main())
