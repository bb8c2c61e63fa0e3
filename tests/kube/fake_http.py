"""Serve a :class:`~tests.kube.fake_apiserver.FakeApiServer` over real HTTP/1.1 on localhost.

The in-process fake answers ``httpx.Request`` objects; this wraps it in an h11 server on a TCP
port, so another process (the daemon under test, a benchmark) can use it through a kubeconfig.
Watch responses are streamed with chunked encoding as the real API server does.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import h11
import httpx
import trio

from tests.kube.fake_apiserver import FakeApiServer

__all__ = ["serve_fake_http", "write_kubeconfig"]


async def _handle(fake: FakeApiServer, stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)

    async def next_event() -> object:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                continue
            return event

    async with stream:
        while True:
            event = await next_event()
            if not isinstance(event, h11.Request):
                return
            body = b""
            while True:
                part = await next_event()
                if isinstance(part, h11.Data):
                    body += part.data
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    return
            request = httpx.Request(
                event.method.decode(),
                "http://fake.invalid" + event.target.decode(),
                headers=[(k.decode(), v.decode()) for k, v in event.headers],
                content=body,
            )
            try:
                response = await fake._handle(request)
            except httpx.ConnectError:
                return  # "Down": drop the connection.
            headers = [
                (k, v)
                for k, v in response.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding")
            ]
            streaming = not isinstance(response.stream, httpx.ByteStream)
            if streaming:
                headers.append(("Transfer-Encoding", "chunked"))
                payload = b""
            else:
                payload = response.content
                headers.append(("Content-Length", str(len(payload))))
            await stream.send_all(
                conn.send(h11.Response(status_code=response.status_code, headers=headers)) or b""
            )
            if streaming:
                body_stream = response.stream
                assert isinstance(body_stream, httpx.AsyncByteStream)
                try:
                    # Iterate the stream itself, closed on every exit (no generator left to GC).
                    async with contextlib.aclosing(body_stream.__aiter__()) as chunks:
                        async for chunk in chunks:
                            await stream.send_all(conn.send(h11.Data(data=chunk)) or b"")
                except (httpx.ReadError, trio.BrokenResourceError):
                    return
                finally:
                    await body_stream.aclose()
            elif payload:
                await stream.send_all(conn.send(h11.Data(data=payload)) or b"")
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()


async def serve_fake_http(
    fake: FakeApiServer, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``fake`` on 127.0.0.1 (a free port, given to ``task_status.started``) until
    cancelled. Cancellation: closes the listener and every connection."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    task_status.started(port)

    async def handler(stream: trio.SocketStream) -> None:
        with contextlib.suppress(
            trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError
        ):
            await _handle(fake, stream)

    await trio.serve_listeners(handler, listeners)


def write_kubeconfig(path: Path, port: int) -> Path:
    """A kubeconfig pointing at the fake on ``port`` (plain HTTP, no credentials)."""
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
        f"clusters: [{{name: fake, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
        "users: [{name: fake, user: {}}]\n"
        "contexts: [{name: fake, context: {cluster: fake, user: fake}}]\n"
    )
    return path
