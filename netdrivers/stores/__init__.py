"""Where networks and endpoints are kept: the store contract, SQLite and etcd."""
