"""Archives: `reader` (the one safe reader), `fetch` (fetching and unpacking by URI), `inspect` (`fnpack inspect`).

The reader's public names are re-exported here: `from fnpack.archive import open_archive`.
Importing this package imports the reader only (stdlib only), never `fetch` or `inspect`:
import those by their full names, `fnpack.archive.fetch` and `fnpack.archive.inspect`.
"""

from fnpack.archive.reader import MANIFEST_NAME, MAX_MANIFEST_SIZE, Limits, SafeArchive, open_archive, sha256_file

__all__ = ["MANIFEST_NAME", "MAX_MANIFEST_SIZE", "Limits", "SafeArchive", "open_archive", "sha256_file"]
