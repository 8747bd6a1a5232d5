"""fundwatch: infra."""
