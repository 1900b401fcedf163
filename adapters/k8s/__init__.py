"""The Kubernetes API: one REST client (client.py), and the reads, deletes and logs
preview-env needs (cluster.py)."""
