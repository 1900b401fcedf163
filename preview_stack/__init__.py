"""The Pulumi program for one preview environment and its pure core."""
