"""The wire protocols clients speak (EC2 Query, OCCI, the admin JSON API), each over the broker."""
