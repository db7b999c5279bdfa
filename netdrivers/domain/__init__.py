"""Plain typed objects and pure decisions: the driver contract, security groups, IPAM, the
kinds of refusal. Imports nothing else of netdrivers."""
