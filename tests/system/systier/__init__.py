"""Harness of the systemd tier: cached Debian rootfs, nspawn container, agent installation."""
