"""The agent's own clone of the fleet repository: cloning and pulling, the git environment, lock updates.

Grouped because every git child process is started from here with one environment rule (``gitenv``),
so credentials and the isolation from the user's git configuration are decided in one place.
"""
