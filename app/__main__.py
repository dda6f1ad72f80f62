"""`python -m app serve`."""

import sys

from app.cli import main

sys.exit(main())
