"""Low latency (DESIGN §6): the agent that grants LL access to flows, and its policer."""
