"""The gateway's HTTP/1.1 client to workers, against a real server on a Unix socket."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fnpack.platform.forward import UpstreamClosed, end_to_end
from fnpack.platform.workers import Worker


async def _serve(path: Path, replies: list[bytes], accepted: list[int]) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        while replies:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            await reader.readexactly(length)
            reply = replies.pop(0)
            if not reply:  # an empty reply: die with the request held
                writer.close()
                return
            writer.write(reply)
            await writer.drain()
            if b"connection: close" in reply:
                writer.close()
                return

    return await asyncio.start_unix_server(handle, path=str(path))


def test_kept_alive_connections_are_reused_and_closed_ones_are_not(tmp_path: Path) -> None:
    ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
    close = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}"
    chunked = b"HTTP/1.1 422 Unprocessable\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"

    async def main() -> None:
        accepted: list[int] = []
        replies = [ok, ok, chunked, ok, close, ok]
        server = await _serve(tmp_path / "w.sock", replies, accepted)
        worker = Worker(pid=0, socket=str(tmp_path / "w.sock"))
        answers = []
        for _ in range(6):
            conn = await worker.connection()
            response = await conn.request(b"POST", b"/invoke", [(b"content-type", b"application/json")], b"{}")
            answers.append((response.status, response.body, response.keep_alive))
            worker.give_back(conn, response.keep_alive)
        server.close()
        assert answers == [(200, b"{}", True), (200, b"{}", True), (422, b"abc", True), (200, b"{}", True),
                           (200, b"{}", False), (200, b"{}", True)]
        assert len(accepted) == 2  # one connection until the server said close, then a new one

    asyncio.run(main())


def test_a_worker_dying_with_the_request_is_reported(tmp_path: Path) -> None:
    async def main() -> None:
        server = await _serve(tmp_path / "w.sock", [b""], [])
        worker = Worker(pid=0, socket=str(tmp_path / "w.sock"))
        conn = await worker.connection()
        with pytest.raises(UpstreamClosed) as caught:
            await conn.request(b"POST", b"/invoke", [], b"{}")
        assert caught.value.answered is False
        server.close()

    asyncio.run(main())


def test_interim_responses_are_skipped_and_stray_bytes_retire_the_connection(tmp_path: Path) -> None:
    ok = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\none"
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" \
              b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\ntwo"
    stray = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nthreeHTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx"

    async def main() -> None:
        accepted: list[int] = []
        server = await _serve(tmp_path / "w.sock", [interim, ok, stray, ok], accepted)
        worker = Worker(pid=0, socket=str(tmp_path / "w.sock"))
        answers = []
        for _ in range(4):
            conn = await worker.connection()
            response = await conn.request(b"POST", b"/invoke", [], b"{}")
            answers.append((response.status, response.body, response.keep_alive))
            worker.give_back(conn, response.keep_alive)
            await asyncio.sleep(0.05)
        server.close()
        assert answers == [(200, b"two", True), (200, b"one", True), (200, b"three", False), (200, b"one", True)]
        assert len(accepted) == 2  # the connection with a stray answer on it was not used again

    asyncio.run(main())


def test_only_end_to_end_headers_are_forwarded() -> None:
    headers = [(b"connection", b"keep-alive, X-Private"), (b"x-private", b"1"), (b"expect", b"100-continue"),
               (b"te", b"trailers"), (b"transfer-encoding", b"chunked"), (b"content-type", b"application/json"),
               (b"authorization", b"Bearer t")]
    assert end_to_end(headers) == [(b"content-type", b"application/json"), (b"authorization", b"Bearer t")]
