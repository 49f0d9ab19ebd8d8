"""What goes to disk and how it is trusted: atomic files, content hashes, locks, stage records."""
