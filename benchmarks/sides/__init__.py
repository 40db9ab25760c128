"""One script per stack; each runs as an SCP or an SCU in its own process."""
