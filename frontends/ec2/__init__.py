"""The Amazon EC2 Query API frontend: signatures, parameter parsing, actions and XML replies."""
