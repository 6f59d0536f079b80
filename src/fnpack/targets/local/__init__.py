"""The local target: the client of the local platform (`fnpack serve`)."""
