"""fundwatch: streams."""
