"""The contract between the domains (docs/architecture.md, docs/abi.md).

Everything both sides must agree on, byte for byte: the shared-memory
layouts (`schema`, `ring`, `umd`, `advisory`), the EVENT ring (`events`),
doorbells, memfds, and the control protocol with its transport
(`protocol`, `transport`, `paths`). It imports only the standard library,
msgspec and numpy: a client reads it without loading the trusted side.
"""
