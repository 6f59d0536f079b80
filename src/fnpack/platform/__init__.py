"""The local platform (`fnpack serve`): registry, gateway, workers."""
