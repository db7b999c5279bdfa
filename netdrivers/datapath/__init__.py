"""The drivers: what programs the kernel and Open vSwitch, over the domain only."""
