"""`python -m ax_llm_provider.cli ...` is `ax-llm ...`."""

import sys

from . import main

sys.exit(main())
