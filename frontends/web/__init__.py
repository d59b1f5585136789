"""The operations center: server-rendered pages over the same service layer as the admin API."""
