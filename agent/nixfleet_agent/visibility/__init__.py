"""Visibility and reboots (issue 16): needs-reboot detection, the automatic reboot in a window,
drift of the deployed commit, and the Prometheus text file. One package so the shared modules
(config, heartbeat, agent, cli) each need only a line or two to use it."""
