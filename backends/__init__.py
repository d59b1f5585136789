"""Backends: the drivers that run instances on hypervisors, public clouds and peers."""
