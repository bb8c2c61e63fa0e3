"""Hostile peers against dracpu's NRI plugin and Kubernetes API client (for ``just fuzz``).

Two trio functions, each returning one row per attack::

    {"target", "attack", "alive", "latency_ms", "rss_delta_mb", "fd_delta", "note"}

* :func:`run_nri_attacks`: a hostile runtime (a raw unix socket server written here, bytes packed
  by hand) that the real :class:`~dracpu.nri.NriPlugin` dials. Each attack gets one connection;
  then the bench closes it and answers the plugin's redial as a good runtime (register,
  Configure, Synchronize) and times one CreateContainer: that is ``latency_ms``, and ``alive``
  means it succeeded.
* :func:`run_kube_attacks`: a hostile HTTP server on loopback (tests/kube/http_peer.py) that a
  real :class:`~dracpu.kube.Reflector` and :class:`~dracpu.kube.KubeClient` talk to. After each
  attack the server turns good; ``alive`` means the reflector's task still runs and it synced the
  good server's objects, ``latency_ms`` times one list against it. The storm attacks report the
  watch requests per second in ``note``.

The components run in this process: RSS (from /proc/self/statm) and open fds are measured before
the attack and after recovery. Run alone it prints a table::

    python bench/fuzz_peers.py [--nri-only | --kube-only] [--fast]

``--fast`` (``fast=True``, as ``bench/fuzz.py --fast`` passes it) shortens the NRI timeouts to
1 s, floods 10,000 requests and runs each API attack for 1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dracpu.backoff import Backoff  # noqa: E402
from dracpu.kube.client import KubeClient, RetryPolicy  # noqa: E402
from dracpu.kube.config import KubeConfig  # noqa: E402
from dracpu.kube.resources import NODES  # noqa: E402
from dracpu.kube.watch import Reflector  # noqa: E402
from dracpu.nri import NriPlugin, mux, ttrpc  # noqa: E402
from generated.nri.pkg.api import v1alpha1 as api  # noqa: E402
from generated.ttrpc import Response  # noqa: E402
from tests.kube.http_peer import (  # noqa: E402
    GoodApi,
    HttpPeer,
    HttpRequest,
    bookmark,
    send_body,
    send_head,
)
from tests.nri.hostile_runtime import (  # noqa: E402
    MUX,
    TTRPC,
    accept_one,
    answer_registration,
    flood_without_reading,
    read_until_eof,
    request_frame,
)
from tests.nri.inmemory import PLUGIN, FakeRuntime  # noqa: E402
from tests.nri.recording_handler import RecordingHandler  # noqa: E402

Row = dict[str, Any]
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    """This process's resident set size in MiB (after a collection, so garbage does not count)."""
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / (1 << 20)


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def row(target: str, attack: str, alive: bool, latency: float | None, rss0: float, fd0: int,
        note: str) -> Row:  # fmt: skip
    return {
        "target": target,
        "attack": attack,
        "alive": alive,
        "latency_ms": None if latency is None else round(latency * 1000, 2),
        "rss_delta_mb": round(rss_mb() - rss0, 1),
        "fd_delta": fds() - fd0,
        "note": note,
    }


# ---------------------------------------------------------------------------------------- NRI


class _LostReasons(logging.Handler):
    """Collects the plugin's "connection lost" reasons (the close reason it logged)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "connection lost" in text or "connection closed" in text:
            self.reasons.append(text)


async def _attack_flood(stream: trio.SocketStream, count: int = 60_000) -> str:
    start = time.monotonic()
    peak = rss_mb()

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_mb())
            await trio.sleep(0.5)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        sent = await flood_without_reading(stream, count)
        await trio.sleep(2.0)  # whatever the plugin holds for the flood, it holds it now
        nursery.cancel_scope.cancel()
    took = time.monotonic() - start
    return f"{count:,} refused requests unread: {sent >> 10} KiB taken in {took:.1f} s, peak RSS {peak:.0f} MiB"  # noqa: E501


async def _attack_partial(stream: trio.SocketStream) -> str:
    frame = request_frame(1)
    await stream.send_all(frame[:-5])
    start = time.monotonic()
    await read_until_eof(stream)
    return f"closed by plugin after {time.monotonic() - start:.1f} s"


async def _attack_slowloris(stream: trio.SocketStream) -> str:
    start = time.monotonic()
    data = MUX.pack(1, 4000) + b"x" * 4000
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        for byte in data:
            await stream.send_all(bytes([byte]))
            await trio.sleep(0.25)
    return f"1 byte / 0.25 s; closed by plugin after {time.monotonic() - start:.1f} s"


async def _attack_garbage(stream: trio.SocketStream) -> str:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(random.Random(8).randbytes(256 << 10))
    with trio.move_on_after(15):
        await read_until_eof(stream)
    return "256 KiB of random bytes"


async def _attack_oversized(stream: trio.SocketStream) -> str:
    await stream.send_all(MUX.pack(1, 10) + TTRPC.pack(1 << 30, 1, 1, 0))
    with trio.move_on_after(15):
        await read_until_eof(stream)
    return "ttrpc header announcing 1 GiB"


async def _attack_truncated(stream: trio.SocketStream) -> str:
    whole = bytes(
        api.CreateContainerRequest(
            pod=api.PodSandbox(id="p", name="pod" * 20),
            container=api.Container(id="c", name="ctr" * 20),
        )
    )
    cuts = sorted({max(1, len(whole) * k // 10) for k in range(1, 10)})
    for i, cut in enumerate(cuts):
        await stream.send_all(request_frame(2 * i + 1, "CreateContainer", whole[:cut]))
    frames, messages = mux.Decoder(), ttrpc.Decoder()
    codes: Counter[str] = Counter()
    with trio.move_on_after(3):
        while sum(codes.values()) < len(cuts):
            data = await stream.receive_some(1 << 16)
            if not data:
                break
            for conn_id, payload in frames.feed(data):
                for msg in messages.feed(payload) if conn_id == 1 else []:
                    status = Response.parse(msg.body).status
                    codes[ttrpc.Code(status.code).name if status else "OK"] += 1
    shown = ", ".join(f"{n} {c}" for c, n in sorted(codes.items()))
    return f"{len(cuts)} CreateContainer payloads cut short: answers {shown or 'none'}"


async def _good_session(stream: trio.SocketStream) -> float | None:
    """Serve one connection as a correct runtime; returns a CreateContainer's latency."""
    runtime = FakeRuntime(stream)
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.conn.run)
        try:
            with trio.fail_after(10):
                await runtime.registered.wait()
                await runtime.configure()
                await runtime.synchronize([])
                request = api.CreateContainerRequest(
                    pod=api.PodSandbox(id="p"), container=api.Container(id="c", name="c")
                )
                start = time.perf_counter()
                await runtime.conn.call(PLUGIN, "CreateContainer", bytes(request), timeout=5)
                latency = time.perf_counter() - start
        except (trio.TooSlowError, Exception):
            latency = None
        runtime.conn.close("bench: good session done")
        nursery.cancel_scope.cancel()
    return latency


NRI_ATTACKS: list[tuple[str, Callable[[trio.SocketStream], Awaitable[str]]]] = [
    ("refused-flood-no-read", _attack_flood),
    ("partial-frame", _attack_partial),
    ("slowloris", _attack_slowloris),
    ("garbage", _attack_garbage),
    ("oversized-header", _attack_oversized),
    ("truncated-payloads", _attack_truncated),
]


async def run_nri_attacks(*, fast: bool = False, timeouts: float | None = None) -> list[Row]:
    """Each NRI attack against one in-process NriPlugin; ``timeouts`` sets its frame and write
    timeouts (seconds; default 10, 1 when ``fast``). ``fast`` also floods 10,000 requests
    instead of 60,000. Cancellation: stops the plugin and the hostile runtime."""
    if timeouts is None:
        timeouts = 1.0 if fast else 10.0
    flood = 10_000 if fast else 60_000
    rows: list[Row] = []
    tmp = tempfile.mkdtemp(prefix="fuzz-nri-", dir="/tmp")
    path = str(Path(tmp) / "nri.sock")
    lost = _LostReasons()
    nri_log = logging.getLogger("dracpu.nri")
    old_level = nri_log.level
    nri_log.setLevel(logging.INFO)
    nri_log.propagate = False
    nri_log.addHandler(lost)
    kwargs: dict[str, Any] = {
        "socket_path": path,
        "backoff": Backoff(initial=0.05, maximum=0.5),
        "rng": random.Random(1),
    }
    accepted = inspect.signature(NriPlugin).parameters
    for name in ("frame_timeout", "write_timeout"):
        if name in accepted:  # older trees lack them: the bench then measures their defaults
            kwargs[name] = timeouts
    plugin = NriPlugin(RecordingHandler(), **kwargs)
    try:
        async with trio.open_nursery() as nursery:
            listener = await nursery.start(accept_one, path)
            nursery.start_soon(plugin.run)
            with trio.fail_after(30):
                await _good_session(await listener.accept())  # warm-up
            for attack, fn in NRI_ATTACKS:
                rss0, fd0 = rss_mb(), fds()
                with trio.fail_after(120):
                    stream = await listener.accept()
                lost.reasons.clear()
                note = f"not closed by the plugin within {3 * timeouts + 30:.0f} s"
                with trio.move_on_after(3 * timeouts + 30):
                    try:
                        await answer_registration(stream)
                        note = await (
                            _attack_flood(stream, flood) if fn is _attack_flood else fn(stream)
                        )
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        note = f"hostile side: {exc}"
                await trio.aclose_forcefully(stream)
                latency = None
                with trio.move_on_after(30):
                    latency = await _good_session(await listener.accept())
                reason = lost.reasons[0].split("connection closed: ", 1)[-1] if lost.reasons else ""
                note = f"{note}; plugin: {reason[:90]}" if reason else note
                rows.append(row("nri", attack, latency is not None, latency, rss0, fd0, note))
            nursery.cancel_scope.cancel()
    finally:
        nri_log.removeHandler(lost)
        nri_log.setLevel(old_level)
        nri_log.propagate = True
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


# --------------------------------------------------------------------------------------- kube

LIST_OK: dict[str, Any] = {"kind": "List", "metadata": {"resourceVersion": "7"}, "items": []}
Script = Callable[[HttpRequest, trio.SocketStream], Awaitable[None]]


def _storm(events: int) -> Script:
    async def script(request: HttpRequest, stream: trio.SocketStream) -> None:
        if request.is_watch:
            await send_head(stream)
            for _ in range(events):
                await stream.send_all(bookmark("8"))
            return
        await send_body(stream, LIST_OK)

    return script


def _bad_list(body: bytes) -> Script:
    async def script(request: HttpRequest, stream: trio.SocketStream) -> None:
        await send_body(stream, body)

    return script


def _bad_watch(line: bytes) -> Script:
    async def script(request: HttpRequest, stream: trio.SocketStream) -> None:
        if not request.is_watch:
            await send_body(stream, LIST_OK)
            return
        await send_head(stream)
        await stream.send_all(line)
        await trio.sleep(1)

    return script


async def _endless_line(request: HttpRequest, stream: trio.SocketStream) -> None:
    if not request.is_watch:
        await send_body(stream, LIST_OK)
        return
    await send_head(stream)
    await stream.send_all(b'{"type":"ADDED","object":{"x":"')
    while True:
        await stream.send_all(b"y" * 65536)


async def _huge_list(request: HttpRequest, stream: trio.SocketStream) -> None:
    await send_head(stream)
    await stream.send_all(b'{"metadata":{},"items":[' + b" " * (32 << 20) + b"]}")


KUBE_ATTACKS: list[tuple[str, Script, float]] = [
    ("watch-storm-bookmark", _storm(1), 3.0),
    ("watch-storm-empty", _storm(0), 3.0),
    ("list-is-array", _bad_list(b"[]"), 1.5),
    ("items-is-number", _bad_list(b'{"metadata":{},"items":5}'), 1.5),
    ("metadata-is-string", _bad_list(b'{"metadata":"x","items":[]}'), 1.5),
    ("deep-nesting-list", _bad_list(b"[" * 200_000 + b"]" * 200_000), 1.5),
    ("deep-nesting-watch", _bad_watch(b"[" * 200_000 + b"]" * 200_000 + b"\n"), 1.5),
    ("watch-object-is-string", _bad_watch(b'{"type":"ADDED","object":"x"}\n'), 1.5),
    ("huge-list-body-32MiB", _huge_list, 2.0),
    ("endless-watch-line", _endless_line, 2.0),
]


async def run_kube_attacks(*, fast: bool = False) -> list[Row]:
    """Each API-server attack against an in-process Reflector + KubeClient (default settings:
    backoff, minimum watch lifetime, size caps); ``fast`` shortens each attack to 1 s.
    Cancellation: stops both sides."""
    rows: list[Row] = []
    for attack, script, full_seconds in KUBE_ATTACKS:
        seconds = 1.0 if fast else full_seconds
        good = GoodApi()
        current: list[Script] = [script]

        async def serve(
            request: HttpRequest, stream: trio.SocketStream, current: list[Script] = current
        ) -> None:
            await current[0](request, stream)

        peer = HttpPeer(serve)
        rss0, fd0 = rss_mb(), fds()
        alive, latency, note = False, None, ""
        died: list[BaseException] = []
        async with trio.open_nursery() as nursery:
            url = await peer.start(nursery)
            client = KubeClient(
                KubeConfig(server=url, origin="fuzz"), retry=RetryPolicy(attempts=1), timeout=10
            )
            reflector = Reflector(client, NODES, rng=random.Random(3))

            async def run_reflector(
                reflector: Reflector = reflector, died: list[BaseException] = died
            ) -> None:
                try:
                    await reflector.run()
                except Exception as exc:  # the defect under test: it must never get here
                    died.append(exc)

            nursery.start_soon(run_reflector)
            start = time.monotonic()
            await trio.sleep(seconds)
            watches = peer.count(watch=True, since=start)
            total = peer.count(since=start)
            note = f"{total / seconds:.1f} req/s ({watches / seconds:.1f} watch/s)"
            error = reflector.last_error or ""
            current[0] = good
            with trio.move_on_after(35):
                while not died and not (reflector.healthy and set(reflector.store) == {"a"}):  # noqa: ASYNC110
                    await trio.sleep(0.05)
            if not died and reflector.healthy:
                t0 = time.perf_counter()
                try:
                    await client.list(NODES)
                    latency = time.perf_counter() - t0
                    alive = True
                except Exception as exc:
                    note += f"; good list failed: {exc}"
            if died:
                note += f"; reflector died: {type(died[0]).__name__}: {died[0]}"[:200]
            elif error:
                note += f"; {error[:110]}"
            nursery.cancel_scope.cancel()
        await client.aclose()
        rows.append(row("kube", attack, alive, latency, rss0, fd0, note))
    return rows


def print_table(rows: list[Row]) -> None:
    print(f"{'target':6} {'attack':24} {'alive':5} {'lat ms':>8} {'rss MB':>7} {'fds':>4}  note")
    for r in rows:
        lat = "-" if r["latency_ms"] is None else f"{r['latency_ms']:.2f}"
        print(
            f"{r['target']:6} {r['attack']:24} {'yes' if r['alive'] else 'NO':5} {lat:>8} "
            f"{r['rss_delta_mb']:>7.1f} {r['fd_delta']:>4}  {r['note']}"
        )


async def _main(args: argparse.Namespace) -> None:
    rows: list[Row] = []
    if not args.kube_only:
        rows += await run_nri_attacks(fast=args.fast)
    if not args.nri_only:
        rows += await run_kube_attacks(fast=args.fast)
    print_table(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--nri-only", action="store_true")
    parser.add_argument("--kube-only", action="store_true")
    parser.add_argument("--fast", action="store_true")
    logging.basicConfig(level=logging.ERROR)
    trio.run(_main, parser.parse_args())
