"""The Ray backend: a plan's pools on a Ray cluster (`backend.RayBackend`)."""
