"""``modsec-tools watch``: inotify, the daemon's plumbing."""
