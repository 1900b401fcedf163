"""The `pulumi up` front door (Pulumi.yaml main): stack config to the same program the CLI runs."""
