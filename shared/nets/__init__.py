"""shared/nets."""
