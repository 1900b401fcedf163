"""Pulumi backends: checkpoints, lock files and the latest deployed spec, one client per store."""
