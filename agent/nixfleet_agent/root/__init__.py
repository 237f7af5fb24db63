"""The root side of the NixOS privileged switch channel (``nixfleet-agent-privileged``).

Everything here runs as root, started by ``nixfleet-agent-privileged.path`` when the unprivileged
agent drops a request file. It trusts nothing the agent wrote beyond that one small file: see
docs/root-boundary.md for the contract.
"""
