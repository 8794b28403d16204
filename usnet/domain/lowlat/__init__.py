"""Low latency (docs/architecture.md): the agent that grants LL access to flows, its policy,
its policer, and the leases the domain keeps."""
