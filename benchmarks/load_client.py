"""The load client of benchmarks/api.py: HTTP/1.1 by hand over asyncio streams (uvloop), which
costs it little, in a process of its own beside the server it measures.

    load_client.py '{"port": 8000, "method": "GET", "path": "/healthz", "body": "", "key": "",
                     "warmup": 1.0, "duration": 5, "concurrency": 4}'

sends the request back to back on `concurrency` keep-alive connections, for `warmup` seconds
and then `duration` seconds, and prints one line of JSON: the requests measured and those of the
warm-up, the seconds, the p50 and p95 latency, the failures and the first of them.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import statistics
import sys
import time
from typing import Any

from processes import HOST


def raw_request(
    method: str, path: str, port: int, body: bytes = b"", kind: str = "json", key: str = ""
) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: application/json\r\n"
    if key:
        head += f"Authorization: Bearer {key}\r\n"
    if method != "GET":
        head += f"Content-Type: application/{kind}\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


class Connection:
    """One keep-alive connection, opened again when the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        if self.streams is None:
            self.streams = await asyncio.open_connection(HOST, self.port)
        reader, writer = self.streams
        writer.write(request)
        status = await reader.readline()
        if not status:
            raise ConnectionError("the server closed the connection")
        length, chunked, close = -1, False, False
        while (line := await reader.readline()).strip():
            name, _, value = (part.strip().lower() for part in line.partition(b":"))
            if name == b"content-length":
                length = int(value)
            chunked |= name == b"transfer-encoding" and value == b"chunked"
            close |= name == b"connection" and value == b"close"
        if chunked:
            body = b""
            while size := int((await reader.readline()).split(b";")[0], 16):
                body += (await reader.readexactly(size + 2))[:-2]
            await reader.readline()
        elif length >= 0:
            body = await reader.readexactly(length)
        else:
            body, close = await reader.read(), True
        if close:
            self.close()
        return int(status.split()[1]), body

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def hammer(
    request: bytes, port: int, concurrency: int, warmup: float, duration: float
) -> tuple[list[float], list[str], float, int]:
    """Latencies and failures of `request` sent back to back on each connection, the time,
    and the requests of the warm-up."""
    connections = [Connection(port) for _ in range(concurrency)]

    async def one(conn: Connection, until: float, took: list[float], failed: list[str]) -> None:
        while (t0 := time.perf_counter()) < until:
            try:
                status, body = await conn.exchange(request)
            except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
                conn.close()
                failed.append(repr(exc))
                await asyncio.sleep(0.01)
                continue
            took.append(time.perf_counter() - t0)
            if status != 200:
                failed.append(f"HTTP {status}: {body[:300].decode(errors='replace')}")

    async def run_for(seconds: float, took: list[float], failed: list[str]) -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(c, t0 + seconds, took, failed) for c in connections))
        return time.perf_counter() - t0

    warm: list[float] = []
    await run_for(warmup, warm, [])
    took: list[float] = []
    failed: list[str] = []
    elapsed = await run_for(duration, took, failed)
    for conn in connections:
        conn.close()
    return took, failed, elapsed, len(warm)


def client(spec: dict[str, Any]) -> None:
    """Measure one request as `spec` says; print the result as JSON."""
    import uvloop

    body, port = spec["body"].encode(), spec["port"]
    request = raw_request(spec["method"], spec["path"], port, body, key=spec["key"])
    work = hammer(request, port, spec["concurrency"], spec["warmup"], spec["duration"])
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        took, failed, elapsed, warm = runner.run(work)
    cuts = statistics.quantiles(took, n=100, method="inclusive") if len(took) > 1 else [0.0] * 99
    got = {"count": len(took), "warm": warm, "elapsed": elapsed, "p50": cuts[49], "p95": cuts[94]}
    print(json.dumps({**got, "failed": len(failed), "first": failed[0] if failed else ""}))


async def send_all(port: int, requests: list[bytes], concurrency: int) -> list[str]:
    """Send each request once over `concurrency` connections; the failures."""
    pending, failed = iter(requests), []

    async def one(conn: Connection) -> None:
        for request in pending:
            status, body = await conn.exchange(request)
            if status != 200:
                failed.append(f"HTTP {status}: {body[:300].decode(errors='replace')}")
        conn.close()

    await asyncio.gather(*(one(Connection(port)) for _ in range(concurrency)))
    return failed


def call(port: int, method: str, path: str, body: str = "", key: str = "") -> Any:
    """The JSON answer of one request; raise unless it is a 200."""
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        conn.request(method, path, body=body.encode() or None, headers=headers)
        answer = conn.getresponse()
        data = answer.read()
    finally:
        conn.close()
    if answer.status != 200:
        raise RuntimeError(f"{method} {path} answered {answer.status}: {data[:300]!r}")
    return json.loads(data)


def answers(port: int, path: str) -> bool:
    try:
        call(port, "GET", path)
        return True
    except (OSError, RuntimeError, ValueError):
        return False


if __name__ == "__main__":
    client(json.loads(sys.argv[1]))
