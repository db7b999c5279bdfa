"""Network drivers, IPAM and the state store (the networking issue fills this in)."""
