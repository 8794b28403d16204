"""The flow switch: flows, their ports to channels, and the checks of what clients send."""
