"""Switch-time guard-rails: free space before a switch (``preflight``), ``boot`` instead of
``switch`` when NixOS' switch inhibitors changed (``inhibitors``), and optional generation retention
and garbage collection after a successful switch (``retention``). ``rootside`` is what the root
program calls, ``agentside`` what the agent calls where there is no root side (Home Manager).
See docs/guard-rails.md."""
