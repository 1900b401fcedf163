"""The real local test bed: built toolchain plus a loopback Kubernetes control plane."""

from testbed.cluster import Testbed, TestbedError
from testbed.toolchain import Toolchain, ToolchainMissing, ensure, locate

__all__ = ["Testbed", "TestbedError", "Toolchain", "ToolchainMissing", "ensure", "locate"]
