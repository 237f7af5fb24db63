"""Operations that outlive the agent: their journal, launchers, follower and per-operation logs."""
