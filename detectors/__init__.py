"""fundwatch: detectors."""
