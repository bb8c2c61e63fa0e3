"""A raw HTTP/2 + gRPC client over a unix socket, for hostile-peer tests and `just fuzz`.

Built on h2 (the independent HTTP/2 state machine; not grpclib) so a test can send exactly the
bytes an attacker would: unknown frame types, oversized length prefixes, streams it abandons,
more streams than the server allows. Blocking; run it in a worker thread from trio.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DRA_V1 = "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin"
PREPARE_V1 = f"{DRA_V1}/NodePrepareResources"
GET_INFO = "/pluginregistration.Registration/GetInfo"


def frame(frame_type: int, payload: bytes = b"", *, flags: int = 0, stream_id: int = 0) -> bytes:
    """One HTTP/2 frame: 24-bit length, type, flags, 31-bit stream id, payload."""
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([frame_type, flags])
        + struct.pack(">I", stream_id)
        + payload
    )


def grpc_message(payload: bytes, *, declared: int | None = None) -> bytes:
    """A gRPC length-prefixed message (uncompressed); ``declared`` overrides the length."""
    length = len(payload) if declared is None else declared
    return b"\x00" + struct.pack(">I", length) + payload


@dataclass
class Response:
    """What came back on one stream."""

    headers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    ended: bool = False
    reset: bool = False

    @property
    def grpc_status(self) -> int | None:
        status = self.headers.get("grpc-status")
        return int(status) if status is not None else None


class RawH2:
    """One client connection; ``events`` keeps everything h2 reported, ``closed`` is set once
    the server closed the connection (EOF, reset or GOAWAY)."""

    def __init__(self, path: Path | str, *, timeout: float = 5.0, handshake: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.events: list[h2.events.Event] = []
        self.responses: dict[int, Response] = {}
        self.closed = False
        self.goaway = False
        if handshake:
            self.conn.initiate_connection()
            self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def start_request(self, path: str = PREPARE_V1, *, end_stream: bool = False) -> int:
        """Send request headers for ``path``; returns the stream id."""
        sid: int = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "localhost"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
            end_stream=end_stream,
        )
        self.responses[sid] = Response()
        self.flush()
        return sid

    def send_data(
        self, sid: int, data: bytes, *, end_stream: bool = False, wait: float = 5.0
    ) -> int:
        """Send as much of ``data`` as flow control allows within ``wait`` s; returns bytes sent."""
        sent = 0
        deadline = time.monotonic() + wait
        while sent < len(data):
            window = min(
                self.conn.local_flow_control_window(sid),
                self.conn.max_outbound_frame_size,
                len(data) - sent,
            )
            if window > 0:
                last = sent + window == len(data)
                self.conn.send_data(sid, data[sent : sent + window], end_stream=end_stream and last)
                sent += window
                self.flush()
                continue
            if time.monotonic() > deadline or not self.pump(0.05):
                break
        return sent

    def call(self, path: str, payload: bytes, *, timeout: float = 5.0) -> Response:
        """A whole unary call: headers, one message, end of stream; waits for the answer."""
        sid = self.start_request(path)
        self.send_data(sid, grpc_message(payload), end_stream=True)
        return self.wait_response(sid, timeout)

    def wait_response(self, sid: int, timeout: float = 5.0) -> Response:
        deadline = time.monotonic() + timeout
        response = self.responses[sid]
        while not (response.ended or response.reset or self.closed):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer on stream {sid} within {timeout} s")
            self.pump(0.05)
        return response

    def pump(self, wait: float) -> bool:
        """Read what arrives within ``wait`` s; returns False once the connection is closed."""
        if self.closed:
            return False
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return True
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return False
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True
            return False
        for event in events:
            self._record(event)
        try:
            self.flush()
        except OSError:
            self.closed = True
        return not self.closed

    def _record(self, event: h2.events.Event) -> None:
        self.events.append(event)
        sid = getattr(event, "stream_id", None)
        response = self.responses.get(sid) if sid is not None else None
        if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
            if response is not None:
                response.headers.update(dict(event.headers))  # type: ignore[arg-type]
        elif isinstance(event, h2.events.DataReceived):
            if response is not None:
                response.data += event.data or b""
            if event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            if response is not None:
                response.ended = True
        elif isinstance(event, h2.events.StreamReset):
            if response is not None:
                response.reset = True
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = True
            self.closed = True

    def wait_closed(self, timeout: float) -> bool:
        """Whether the server closes the connection within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.pump(0.05):
                return True
        return False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawH2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remote_setting(client: RawH2, code: int, *, wait: float = 0.5) -> int | None:
    """The last value of SETTINGS ``code`` the server sent within ``wait`` s (None if never)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and client.pump(0.05):
        pass
    value = None
    for event in client.events:
        if isinstance(event, h2.events.RemoteSettingsChanged) and code in event.changed_settings:
            value = event.changed_settings[code].new_value
    return value
