"""Where image files live: a local directory (the offline default) or any S3-compatible service."""
