"""The NRI peer fixtures, for the handover tests."""

from tests.nri.conftest import nri_peer_binary, socket_path

__all__ = ["nri_peer_binary", "socket_path"]
