"""fnpack: package ML model functions into deterministic archives and deploy them.

This module is copied into every archive next to `fnpack.runtime`, so it must
import nothing: its import time is part of every cold start.
"""

__version__ = "0.1.0"
