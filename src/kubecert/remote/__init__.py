"""Cluster mode: reach each node over SSH and renew there, one node at a time."""
