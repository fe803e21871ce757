"""What several test packages share: pipelines on loopback, a simulated scan's messages, process checks."""
