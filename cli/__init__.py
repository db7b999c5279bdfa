"""The composition root: ``plugstrip serve`` and the operator commands wire the core,
the adapters and the drivers together; nothing else does."""
