"""fundwatch: rules."""
