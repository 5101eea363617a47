"""Gmail mail provider for brain (google-api-python-client)."""
