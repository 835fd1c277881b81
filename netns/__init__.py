"""Test bed: namespaces, links and native MPTCP peers (see DESIGN.md "netns/")."""

from .topology import CommandError, Topology, ns_pids, python_argv, reap_stale

__all__ = ["Topology", "CommandError", "ns_pids", "python_argv", "reap_stale"]
