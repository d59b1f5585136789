"""Federation: another cloudbroker as a target, reached through its own public EC2 API."""
