"""The domain's memory: arenas of regions and segments, and the packet pools in them."""
