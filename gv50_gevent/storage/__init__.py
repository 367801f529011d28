"""MongoDB: the client and indexes, the batched writer, devices/vehicles, the embedded mongod."""
