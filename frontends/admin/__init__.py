"""The admin API: JSON over HTTP for operators (hosts, users, images, instances, events)."""
