"""Health-gated switches: after activation, prove the host is still healthy, else go back.

``settings`` parses the ``[health]`` table (the same rendered TOML for the agent and for root),
``checks`` runs the checks until they all pass or the grace period ends, ``badlist`` remembers
commits that failed on this host, ``gate`` is the root side's switch (record the previous
generation, activate, check, wait for the agent's confirmation, roll back), ``confirm`` is the
agent's half of that confirmation and ``agentside`` the Home Manager gate and the final report.
See docs/health.md.
"""
