"""`python -m fnpack`: the same as the `fnpack` command."""

from fnpack.cli import main

main()
