"""Downloads stop at the manifest's size and never write outside the data directory."""

import hashlib
import http.server
import os
import threading
import unittest.mock

import pytest

from steerjax.data import download
from steerjax.data.download import DataFile
from steerjax.errors import DataError

BODY = b"pinned content\n" * 20  # 300 bytes
SHA1 = hashlib.sha1(b"blob %d\0" % len(BODY) + BODY).hexdigest()


class StreamServer:
    """Serves ``/o/r/c/f.txt``: the pinned body, then (``extra`` bytes) more, with or without a
    Content-Length; records how many bytes it managed to send."""

    def __init__(self, extra: int, length_header: bool):
        self.sent = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                body = BODY + b"x" * extra
                self.send_response(200)
                if length_header:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for i in range(0, len(body), 1 << 16):
                        self.wfile.write(body[i:i + (1 << 16)])
                        server.sent += len(body[i:i + (1 << 16)])
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def entry(local="src/f.txt"):
    return DataFile("src", "o/r", "c", "f.txt", len(BODY), SHA1, local)


def test_the_pinned_size_downloads(tmp_path):
    with StreamServer(0, length_header=False) as server:
        path, downloaded = download.fetch(entry(), tmp_path, base=server.base, progress=False)
    assert downloaded and path.read_bytes() == BODY


@pytest.mark.parametrize("length_header", [True, False])
def test_a_server_sending_more_than_pinned_is_stopped_at_the_size(tmp_path, length_header):
    """50 MB for a 300-byte file: refused (by its Content-Length, or at byte 301 of a stream), no
    ``.part`` or file left, and at most the pinned size was ever written."""
    written = []
    real_write = download._transfer

    def spy(url, out, e, progress, timeout):
        class Counting:
            def write(self, block):
                written.append(len(block))
                return out.write(block)

        return real_write(url, Counting(), e, progress, timeout)

    with StreamServer(50 * 2**20, length_header=length_header) as server, \
            unittest.mock.patch.object(download, "_transfer", spy):
        with pytest.raises(DataError, match=f"manifest pins {len(BODY)} bytes"):
            download.fetch(entry(), tmp_path, base=server.base, progress=False)
    assert sum(written) <= len(BODY)
    assert os.listdir(tmp_path / "src") == []


@pytest.mark.parametrize("local", ["../outside.txt", "src/../../outside.txt", "/tmp/abs.txt", "src//f.txt",
                                   "src/./f.txt", ""])
def test_a_target_outside_the_data_root_is_refused(tmp_path, local):
    root = tmp_path / "data"
    root.mkdir()
    with StreamServer(0, length_header=True) as server:
        with pytest.raises(DataError, match="refusing to write"):
            download.fetch(entry(local), root, base=server.base, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["data"]


def test_a_symlink_out_of_the_data_root_is_refused(tmp_path):
    root, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / "src").symlink_to(elsewhere)
    with pytest.raises(DataError, match="outside the data directory"):
        download.fetch(entry(), root, base="http://127.0.0.1:9", progress=False)
    assert os.listdir(elsewhere) == []


def test_every_manifest_target_stays_inside_the_root(tmp_path):
    for f in download.all_files():
        assert download.target(tmp_path, f.local).is_relative_to(tmp_path)
