"""The test suite, grouped as the code is (docs/architecture.md, "Layout"): proto, abi, client,
domain, interop (real kernel peers, devices and external programs), bench; helpers beside them."""
