"""The control plane: decides with a store, programs with the drivers, follows the cluster."""
