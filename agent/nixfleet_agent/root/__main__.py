"""``python -m nixfleet_agent.root``: the same program as the ``nixfleet-agent-privileged`` script."""

import sys

from .main import main

sys.exit(main())
