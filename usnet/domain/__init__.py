"""The trusted domain (docs/architecture.md): memory, the loop and its control
sessions, user pipes, the flow switch, netifs, the low-latency agent, and
usnetd with its config. Clients never import it."""
