"""The root side of the privileged switch channel on NixOS and nix-darwin (``nixfleet-agent-privileged``).

Everything here runs as root, started by ``nixfleet-agent-privileged.path`` (NixOS) or launchd WatchPaths (nix-darwin) when the unprivileged
agent drops a request file. It trusts nothing the agent wrote beyond that one small file: see
docs/root-boundary.md for the contract.
"""
