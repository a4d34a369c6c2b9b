"""The browser opens once the page answers, not before (a user must never meet 'connection refused')."""

import http.server
import socket
import threading

from server.compose import open_when_answering


class _StartsSlowly(http.server.BaseHTTPRequestHandler):
    answers = [503, 503, 401]  # still starting, still starting, then a sign-in page

    def do_GET(self):
        self.send_response(self.answers.pop(0) if self.answers else 200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_browser_opens_once_after_the_page_answers():
    server = http.server.HTTPServer(("127.0.0.1", 0), _StartsSlowly)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    opened = []
    try:
        url = f"http://127.0.0.1:{server.server_port}/"
        assert open_when_answering(url, opened.append, timeout=30)
    finally:
        server.shutdown()
    assert opened == [url]
    assert _StartsSlowly.answers == []  # both "still starting" answers were waited out


def test_nothing_opens_while_nothing_answers():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    opened = []
    assert not open_when_answering(f"http://127.0.0.1:{port}/", opened.append, timeout=1)
    assert opened == []
