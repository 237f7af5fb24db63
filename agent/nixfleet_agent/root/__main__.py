"""``python -m nixfleet_agent.root``: the same program as the ``nixfleet-agent-privileged`` script."""

import sys

from .request import main

sys.exit(main())
