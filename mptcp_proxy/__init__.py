"""mptcp-proxy: a lightweight MPTCP v1 (RFC 8684) proxy on an NFQUEUE."""

__version__ = "0.3.0"
