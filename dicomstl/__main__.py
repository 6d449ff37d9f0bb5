"""``python -m dicomstl`` is the ``dicomstl`` command."""

import sys

from dicomstl.cli import main

sys.exit(main())
