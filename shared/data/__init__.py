"""shared/data."""
