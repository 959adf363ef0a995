"""``python3 -m gateway`` is the ``trino-gateway`` command."""
import sys

from gateway.cli import main

sys.exit(main())
