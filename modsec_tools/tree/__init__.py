"""The Concurrent storage tree on disk: its layout, safe reads, deletes, quarantine."""
