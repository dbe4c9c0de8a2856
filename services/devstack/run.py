"""`python -m services.devstack.run` (what `make run` runs): the whole system on this machine.

See services/devstack/launcher.py; `python -m services.devstack.run --help` for the options.
"""

import sys

from services.devstack.launcher import main

if __name__ == "__main__":
    sys.exit(main())
