"""The Kubernetes API: one REST client (client.py); the kubeconfig, reads, deletes and logs
(cluster.py); a change's cached target reads (reader.py); a start's checks before anything
is created (preflight.py) and what its cluster shows afterwards (previews.py)."""
