"""What the tests share, so that no test module imports another (checked by lint-imports).

- `paths`: the repository and its examples.
- `polling`: wait for a condition.
- `processes`: kill a CLI and the provider plugins it leaves behind.
- `cli`: the two front doors, `python -m cli` and `pulumi`, as subprocesses.
- `stacks`: the Pulumi stacks a backend holds.
- `kube`: the Kubernetes client bundle and reads of what an environment left in the cluster.
- `manifests`: `kubectl apply` of built documents, YAML files read as documents.
- `workloads`: the Deployment and Service builders every cluster test's targets use.
- `databases`: PostgreSQL and MariaDB servers for the real node.
- `teams`: teammates (own HOME, host name, backend) for the sharing tests.
- `specs`: environment specs for the pure derivation tests.

Fixtures stay in the conftest.py files, where pytest finds them.
"""
