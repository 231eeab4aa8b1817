"""Boot-time probe installed in place of the agent (build.py --agent-dir guest-image/probe)."""
