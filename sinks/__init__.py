"""fundwatch: sinks."""
