"""``python -m dicomstl_cli`` is the ``dicomstl`` command."""

import sys

from dicomstl_cli.main import main

sys.exit(main())
