"""aimsnap's orchestrator: the CLI, and (as the issues land) the scheduler, actions and outcome store."""
