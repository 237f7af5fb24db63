"""What the agent knows about its host: facts, metrics, the heartbeat built from them, and the status store.

Grouped because the heartbeat is assembled from exactly these parts, and none of them talks to the
dashboard or runs a command: they only read the host and the agent's own state.
"""
