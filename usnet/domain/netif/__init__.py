"""A netif: its transmit multiplexer, AQM, receive mitigation and interface advisory."""
