"""shared/io."""
