"""`just fuzz`: hostile-peer attacks against the real servers, one table row per attack.

The kubelet plugin (``serve_kubelet_plugin`` with a trivial handler and default limits except a
short idle timeout) runs in a child process, as on a node. The parent attacks its DRA and
registration sockets with raw HTTP/2 (tests/support/h2raw.py) and after each attack measures:

* alive: the child is running and a good NodePrepareResources call from grpcio (a fresh
  connection, as a restarted kubelet would make) succeeds;
* the latency of that good call (ms);
* the child's RSS and open-fd deltas against the values before the attack, once the attack's
  connections are gone (the harness waits up to a few seconds for the server to let go).

A crash, a dead server, a traceback in the server's log or growth over the thresholds below
makes the run exit non-zero. If ``bench/fuzz_peers.py`` exists, its ``run_nri_attacks()`` and
``run_kube_attacks()`` (trio async functions returning rows as dicts with the same keys) are
awaited too and their rows join the table and the verdict.

    python bench/fuzz.py [--fast]

``--fast`` runs every attack at a smaller scale (used by the test suite).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import logging
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Verdict thresholds, per attack, measured after the attack's connections are gone. Each
# attack's own transient memory (e.g. 20 x 4 MiB receive windows) is allowed to be reused by
# the allocator but not kept: growth over RSS_LIMIT_MB means memory is pinned.
RSS_LIMIT_MB = 64.0  # below the 80 MiB that 20 pinned 4 MiB streams would hold
FD_LIMIT = 4
TOTAL_RSS_LIMIT_MB = 96.0
GOOD_CALL_LIMIT_MS = 2000.0

IDLE_TIMEOUT = 1.0  # the child's GrpcLimits.idle_timeout, so idle attackers are reclaimed fast
FD_EXHAUSTION_NOFILE = 48  # RLIMIT_NOFILE of the child used for the fd-exhaustion attack


class TrivialHandler:
    """Prepares every claim with one device."""

    async def prepare(self, claims: Sequence[Any]) -> Mapping[str, Any]:
        from dracpu.kubelet import ClaimPrepared, PreparedDevice

        return {c.uid: ClaimPrepared((PreparedDevice("node", "cpudev000"),)) for c in claims}

    async def unprepare(self, claims: Sequence[Any]) -> Mapping[str, Any]:
        from dracpu.kubelet import ClaimUnprepared

        return {c.uid: ClaimUnprepared() for c in claims}


def serve(root: Path, nofile: int | None) -> None:
    """Child process: serve the kubelet plugin under ``root`` until SIGTERM/SIGINT."""
    import trio

    from dracpu.kubelet import GrpcLimits, HealthBoard, KubeletPluginConfig, serve_kubelet_plugin

    if nofile is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    logging.basicConfig(
        level=logging.WARNING,
        filename=root / "server.log",
        format="%(levelname)s %(name)s: %(message)s",
    )

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                await nursery.start(
                    serve_kubelet_plugin,
                    KubeletPluginConfig(
                        kubelet_root=root, grpc_limits=GrpcLimits(idle_timeout=IDLE_TIMEOUT)
                    ),
                    TrivialHandler(),
                    HealthBoard(),
                )
                (root / "ready").touch()
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)


@dataclass
class Server:
    """A server child and how to reach and measure it."""

    root: Path
    proc: subprocess.Popen[bytes]

    @property
    def dra(self) -> Path:
        return self.root / "plugins" / "dra.cpu" / "dra.sock"

    @property
    def registration(self) -> Path:
        return self.root / "plugins_registry" / "dra.cpu-reg.sock"

    def rss_mb(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def fds(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except OSError:
            return -1

    def log_text(self) -> str:
        try:
            return (self.root / "server.log").read_text()
        except OSError:
            return ""


@contextlib.contextmanager
def server(nofile: int | None = None) -> Any:
    root = Path(tempfile.mkdtemp(prefix="fuzz-", dir="/tmp"))
    args = [sys.executable, __file__, "--serve", str(root)]
    if nofile is not None:
        args += ["--nofile", str(nofile)]
    proc = subprocess.Popen(args, cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while not (root / "ready").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server child did not start (exit {proc.poll()})")
            time.sleep(0.05)
        yield Server(root, proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


# --- the good request -------------------------------------------------------------------------

_API: Any = None


def _dra_api() -> Any:
    global _API
    if _API is None:
        from tests.support.grpcio_protos import load_grpc_modules

        _API = load_grpc_modules(REPO / "protos", "k8s.io/kubelet/pkg/apis/dra/v1/api.proto")
    return _API


def good_call(path: Path, timeout: float = 5.0) -> float | None:
    """Latency (ms) of one NodePrepareResources from grpcio on a fresh connection, or None."""
    import grpc

    pb2, pb2_grpc = _dra_api()
    request = pb2.NodePrepareResourcesRequest(
        claims=[pb2.Claim(namespace="ns", name="c", uid="good")]
    )
    start = time.perf_counter()
    try:
        with grpc.insecure_channel(f"unix://{path}") as channel:
            reply = pb2_grpc.DRAPluginStub(channel).NodePrepareResources(request, timeout=timeout)
    except grpc.RpcError:
        return None
    if not reply.claims["good"].devices:
        return None
    return (time.perf_counter() - start) * 1000


# --- attacks (blocking; run in worker threads) ------------------------------------------------


@dataclass(frozen=True)
class Scale:
    clients: int  # how many attacking connections for the per-connection attacks
    idle: int  # connections for the idle flood
    big: int  # abandoned 4 MiB streams
    concurrent: int  # requests in the concurrency attack


FULL = Scale(clients=100, idle=300, big=20, concurrent=1000)
FAST = Scale(clients=12, idle=80, big=6, concurrent=200)


def _quiet(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except OSError:
        return None  # the server closing an attacking connection is the point


def attack_unknown_frames(path: Path, scale: Scale) -> str:
    from tests.support.h2raw import RawH2, frame

    answered = 0
    for frame_type in (0x0B, 0x10, 0xEE):
        with RawH2(path) as client:
            client.send_raw(frame(frame_type, b"\x00" * 8))
            answered += client.pump(0.2)
    return f"3 frame types; {answered}/3 connections kept"


def attack_garbage(path: Path, scale: Scale) -> str:
    from tests.support.h2raw import PREFACE, RawH2

    rng = random.Random(8)
    closed = 0
    for i in range(scale.clients):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 512)))
        with RawH2(path, handshake=False) as client:
            _quiet(lambda c=client, j=junk, i=i: c.send_raw((PREFACE if i % 2 else b"") + j))
            closed += bool(_quiet(lambda c=client: c.wait_closed(2.0)))
    return f"{scale.clients} connections of random bytes; {closed} closed by the server"


def attack_huge_frame_header(path: Path, scale: Scale) -> str:
    from tests.support.h2raw import RawH2

    closed = 0
    for _ in range(scale.clients):
        with RawH2(path) as client:
            _quiet(lambda c=client: c.send_raw(b"\xff\xff\xff\x00\x00\x00\x00\x00\x01"))
            closed += bool(_quiet(lambda c=client: c.wait_closed(2.0)))
    return f"{scale.clients} x 16 MiB frame header; {closed} closed at once"


def attack_idle_flood(path: Path, scale: Scale) -> str:
    from tests.support.h2raw import PREFACE, frame

    socks = []
    for _ in range(scale.idle):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)  # blocks while the listen backlog is full, as a real flood would
        try:
            s.connect(str(path))
            s.sendall(PREFACE + frame(0x4))
        except OSError:
            s.close()
            continue
        socks.append(s)
    during = good_call(path)
    time.sleep(IDLE_TIMEOUT * 2.5)
    closed = 0
    for s in socks:
        s.settimeout(0.01)
        try:
            while s.recv(65536):
                pass
            closed += 1
        except (TimeoutError, OSError):
            pass
        s.close()
    shown = f"{during:.1f} ms" if during is not None else "FAILED"
    return f"{len(socks)} idle; good call during flood {shown}; {closed} closed by server"


def attack_slowloris(path: Path, scale: Scale) -> str:
    from tests.support.h2raw import PREFACE, frame

    socks = []
    for _ in range(min(scale.clients, 40)):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(path))
        socks.append(s)
    payload = PREFACE + frame(0x4) + frame(0x1, b"\x83" * 64, flags=0x4, stream_id=1)
    cut = 0
    deadline = time.monotonic() + IDLE_TIMEOUT * 3
    for byte in payload:
        if time.monotonic() > deadline:
            break
        for s in list(socks):
            try:
                s.sendall(bytes([byte]))
            except OSError:
                socks.remove(s)
                s.close()
                cut += 1
        time.sleep(0.02)
    for s in socks:
        s.close()
    return f"byte-at-a-time preface/headers; {cut}/{min(scale.clients, 40)} cut off by the server"


def attack_concurrent(path: Path, scale: Scale) -> str:
    from tests.support.h2raw import PREPARE_V1, RawH2, grpc_message

    pb2, _ = _dra_api()
    payload = pb2.NodePrepareResourcesRequest(
        claims=[pb2.Claim(namespace="ns", name="c", uid="x")]
    ).SerializeToString()
    connections = 10
    per = scale.concurrent // connections
    ok = 0
    start = time.perf_counter()
    clients = [RawH2(path) for _ in range(connections)]
    try:
        sids = []
        for client in clients:
            batch = []
            for _ in range(min(per, 90)):  # under the advertised stream limit
                sid = client.start_request(PREPARE_V1)
                client.send_data(sid, grpc_message(payload), end_stream=True)
                batch.append(sid)
            sids.append(batch)
        for client, batch in zip(clients, sids, strict=True):
            for sid in batch:
                with contextlib.suppress(TimeoutError):
                    ok += client.wait_response(sid, 20).grpc_status == 0
    finally:
        for client in clients:
            client.close()
    total = sum(len(b) for b in sids)
    return f"{ok}/{total} OK in {time.perf_counter() - start:.2f} s over {connections} connections"


def attack_mid_request_disconnect(path: Path, scale: Scale) -> str:
    from tests.support.h2raw import PREPARE_V1, RawH2, grpc_message

    for i in range(scale.clients):
        with RawH2(path) as client:
            sid = client.start_request(PREPARE_V1)
            if i % 2:
                client.send_data(sid, grpc_message(b"\x0a\x10", declared=4096)[:-1])
    return f"{scale.clients} clients gone after headers or half a message"


def _abandon_big(path: Path, scale: Scale, reset: bool) -> str:
    from tests.support.h2raw import PREPARE_V1, RawH2, grpc_message

    size = 4 << 20
    sent = 0
    for _ in range(scale.big):
        with RawH2(path) as client:
            sid = client.start_request(PREPARE_V1)
            sent += client.send_data(sid, grpc_message(b"\x00" * (size - 1), declared=size), wait=2)
            if reset:
                client.conn.reset_stream(sid)
                client.flush()
                client.pump(0.05)
    how = "RST_STREAM" if reset else "disconnect"
    return f"{scale.big} x 4 MiB streams, {sent / (1 << 20):.0f} MiB sent, then {how}"


def attack_abandoned_disconnect(path: Path, scale: Scale) -> str:
    return _abandon_big(path, scale, reset=False)


def attack_abandoned_rst(path: Path, scale: Scale) -> str:
    return _abandon_big(path, scale, reset=True)


def attack_oversized(path: Path, scale: Scale) -> str:
    from tests.support.h2raw import PREPARE_V1, RawH2, grpc_message

    refused = 0
    for _ in range(scale.clients):
        with RawH2(path) as client:
            sid = client.start_request(PREPARE_V1)
            client.send_data(sid, grpc_message(b"\x0a" * 64, declared=16 << 20))
            with contextlib.suppress(TimeoutError):
                refused += client.wait_response(sid, 5).grpc_status == 8
    return f"{refused}/{scale.clients} 16 MiB requests refused RESOURCE_EXHAUSTED"


def attack_too_many_streams(path: Path, scale: Scale) -> str:
    from h2.settings import SettingCodes

    from tests.support.h2raw import PREPARE_V1, RawH2, remote_setting

    closed = 0
    advertised = None
    for _ in range(max(scale.clients // 4, 2)):
        with RawH2(path) as client:
            advertised = remote_setting(client, SettingCodes.MAX_CONCURRENT_STREAMS, wait=0.1)
            client.conn.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS] = 10_000
            client.conn.remote_settings.acknowledge()
            for _ in range((advertised or 100) + 5):
                if _quiet(lambda c=client: c.start_request(PREPARE_V1)) is None:
                    break
            closed += bool(_quiet(lambda c=client: c.wait_closed(3.0)))
    return f"advertised {advertised}; {closed} connections over the limit closed"


def attack_malformed_protobuf(path: Path, scale: Scale) -> str:
    from tests.support.h2raw import PREPARE_V1, RawH2

    pb2, _ = _dra_api()
    good = pb2.NodePrepareResourcesRequest(
        claims=[pb2.Claim(namespace="ns", name="claim", uid="uid-1")]
    ).SerializeToString()
    payloads = {
        "truncated": good[:-3],
        "varint-for-message": b"\x08\x01",
        "varint-for-string": b"\x0a\x02\x08\x07",
        "bad-utf8": b"\x0a\x03\x0a\x01\xff",
        "garbage": bytes(random.Random(5).randrange(256) for _ in range(64)),
    }
    invalid = 0
    total = 0
    with RawH2(path) as client:
        for _ in range(max(scale.clients // len(payloads), 1)):
            for payload in payloads.values():
                total += 1
                with contextlib.suppress(TimeoutError):
                    invalid += client.call(PREPARE_V1, payload).grpc_status == 3
    return f"{invalid}/{total} answered INVALID_ARGUMENT ({', '.join(payloads)})"


Attack = Callable[[Path, Scale], str]

ATTACKS: list[tuple[str, str, Attack]] = [
    ("kubelet-dra", "unknown frame types", attack_unknown_frames),
    ("kubelet-reg", "unknown frame types", attack_unknown_frames),
    ("kubelet-dra", "garbage bytes", attack_garbage),
    ("kubelet-reg", "garbage bytes", attack_garbage),
    ("kubelet-dra", "16 MiB frame header", attack_huge_frame_header),
    ("kubelet-dra", "many idle connections", attack_idle_flood),
    ("kubelet-dra", "slowloris", attack_slowloris),
    ("kubelet-dra", "many concurrent requests", attack_concurrent),
    ("kubelet-dra", "mid-request disconnects", attack_mid_request_disconnect),
    ("kubelet-dra", "abandoned 4 MiB streams", attack_abandoned_disconnect),
    ("kubelet-dra", "abandoned 4 MiB streams, RST", attack_abandoned_rst),
    # The same again: freed memory is reused, so a second round must not grow RSS again.
    ("kubelet-dra", "abandoned 4 MiB streams, again", attack_abandoned_disconnect),
    ("kubelet-dra", "oversized messages", attack_oversized),
    ("kubelet-dra", "too many streams", attack_too_many_streams),
    ("kubelet-dra", "malformed protobuf", attack_malformed_protobuf),
]


# --- measuring --------------------------------------------------------------------------------


def settle(srv: Server, fds_before: int, wait: float) -> None:
    """Give the server up to ``wait`` s to let go of the attack's connections."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and srv.fds() > fds_before:
        time.sleep(0.1)


def run_attack(srv: Server, target: str, name: str, attack: Attack, scale: Scale) -> dict[str, Any]:
    path = srv.registration if target == "kubelet-reg" else srv.dra
    good_call(srv.dra)  # warm: the first call of a fresh process pays for imports
    rss0, fds0 = srv.rss_mb(), srv.fds()
    try:
        note = attack(path, scale)
    except Exception as exc:  # the attack itself broke (e.g. the server vanished)
        note = f"attack failed: {type(exc).__name__}: {exc}"
    settle(srv, fds0, IDLE_TIMEOUT * 3)
    latency = good_call(srv.dra)
    alive = srv.proc.poll() is None and latency is not None
    return {
        "target": target,
        "attack": name,
        "alive": alive,
        "latency_ms": latency,
        "rss_delta_mb": srv.rss_mb() - rss0,
        "fd_delta": srv.fds() - fds0,
        "note": note,
    }


def run_fd_exhaustion(scale: Scale) -> dict[str, Any]:
    """A separate child with RLIMIT_NOFILE lowered: accept() fails with EMFILE; the server must
    pause accepting, survive, and serve again once the attackers leave."""
    from tests.support.h2raw import PREFACE, frame

    with server(nofile=FD_EXHAUSTION_NOFILE) as srv:
        good_call(srv.dra)
        rss0, fds0 = srv.rss_mb(), srv.fds()
        socks = []
        for _ in range(FD_EXHAUSTION_NOFILE * 2):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(1)
            try:
                s.connect(str(srv.dra))
                s.sendall(PREFACE + frame(0x4))
            except OSError:
                s.close()
                continue
            socks.append(s)
        time.sleep(0.5)
        peak = srv.fds()
        for s in socks:
            s.close()
        settle(srv, fds0, IDLE_TIMEOUT * 3)
        latency = good_call(srv.dra)
        paused = "pausing accepts" in srv.log_text()
        return {
            "target": "kubelet-dra",
            "attack": f"fd exhaustion (RLIMIT_NOFILE {FD_EXHAUSTION_NOFILE})",
            "alive": srv.proc.poll() is None and latency is not None,
            "latency_ms": latency,
            "rss_delta_mb": srv.rss_mb() - rss0,
            "fd_delta": srv.fds() - fds0,
            "note": f"{len(socks)} connects, server peaked at {peak} fds, "
            f"{'paused accepts (EMFILE)' if paused else 'no EMFILE seen'}",
            "_tracebacks": srv.log_text().count("Traceback"),
        }


# --- peers' rows, table, verdict --------------------------------------------------------------


async def _peer_rows(fast: bool) -> list[dict[str, Any]]:
    """Rows from ``bench/fuzz_peers.py`` (another area's attacks), if that module exists.

    Its functions are called without arguments, or with ``fast=`` if they accept it.
    """
    path = REPO / "bench" / "fuzz_peers.py"
    if not path.exists():
        return []
    rows: list[dict[str, Any]] = []

    def broken(name: str, exc: BaseException) -> dict[str, Any]:
        return {
            "target": name,
            "attack": "(harness)",
            "alive": False,
            "latency_ms": None,
            "rss_delta_mb": 0.0,
            "fd_delta": 0,
            "note": f"{type(exc).__name__}: {exc}",
        }

    try:
        spec = importlib.util.spec_from_file_location("fuzz_peers", path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as exc:
        return [broken("fuzz_peers", exc)]
    for name in ("run_nri_attacks", "run_kube_attacks"):
        fn: Callable[..., Awaitable[list[dict[str, Any]]]] | None = getattr(module, name, None)
        if fn is None:
            continue
        kwargs = {"fast": fast} if "fast" in inspect.signature(fn).parameters else {}
        try:
            rows.extend(await fn(**kwargs))
        except Exception as exc:
            rows.append(broken(name, exc))
    return rows


def verdict(row: Mapping[str, Any]) -> str:
    """'ok' or why the row fails the run."""
    if not row["alive"]:
        return "DEAD"
    if row["latency_ms"] is not None and row["latency_ms"] > GOOD_CALL_LIMIT_MS:
        return "SLOW"
    if row["rss_delta_mb"] > RSS_LIMIT_MB:
        return "RSS"
    if row["fd_delta"] > FD_LIMIT:
        return "FDS"
    if row.get("_tracebacks"):
        return "TRACEBACK"
    return "ok"


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'target':<12} {'attack':<36} {'alive':<5} {'good ms':>8} {'RSS MB':>7} {'fds':>4}"
        "  verdict  note"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        latency = f"{row['latency_ms']:.1f}" if row["latency_ms"] is not None else "-"
        print(
            f"{row['target']:<12} {row['attack']:<36} {'yes' if row['alive'] else 'NO':<5} "
            f"{latency:>8} {row['rss_delta_mb']:>+7.1f} {row['fd_delta']:>+4d}  "
            f"{verdict(row):<7}  {row['note']}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="smaller attacks (for CI)")
    parser.add_argument("--serve", metavar="ROOT", help=argparse.SUPPRESS)
    parser.add_argument("--nofile", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve), args.nofile)
        return 0

    import trio

    scale = FAST if args.fast else FULL
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    with server() as srv:
        rss_start = srv.rss_mb()
        for target, name, attack in ATTACKS:
            rows.append(run_attack(srv, target, name, attack, scale))
            print(f"  {target} {name}: done", file=sys.stderr, flush=True)
        total_growth = srv.rss_mb() - rss_start
        log = srv.log_text()
        crashed = srv.proc.poll()
    rows.append(run_fd_exhaustion(scale))
    rows.extend(trio.run(_peer_rows, args.fast))
    print_table(rows)
    lines = log.count("\n")
    print(
        f"\nkubelet server: RSS grew {total_growth:+.1f} MB over the run "
        f"(limit {TOTAL_RSS_LIMIT_MB:.0f}); {lines} log lines, {log.count('Traceback')} tracebacks"
    )
    print(
        f"thresholds per attack: alive, good call <= {GOOD_CALL_LIMIT_MS:.0f} ms, "
        f"RSS delta <= {RSS_LIMIT_MB:.0f} MB, fd delta <= {FD_LIMIT}"
    )
    if crashed is not None:
        failures.append(f"kubelet server exited with {crashed}")
    if total_growth > TOTAL_RSS_LIMIT_MB:
        failures.append(f"kubelet server RSS grew {total_growth:.1f} MB")
    if "Traceback" in log:
        failures.append("tracebacks in the kubelet server log")
    failures += [f"{r['target']} {r['attack']}: {verdict(r)}" for r in rows if verdict(r) != "ok"]
    for failure in failures:
        print(f"FAIL: {failure}")
    print("fuzz: " + ("FAILED" if failures else "no crash, no unbounded growth, all alive"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
