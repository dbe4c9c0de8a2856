"""`python -m services.run` (what `make run` runs): the whole system on this machine.

See services/common/launcher.py; `python -m services.run --help` for the options.
"""

import sys

from services.common.launcher import main

if __name__ == "__main__":
    sys.exit(main())
