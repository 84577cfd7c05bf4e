"""The ingest pipeline: examine entries, commit batches exactly once, recover."""
