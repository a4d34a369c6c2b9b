"""Eight clients at once, on one device: all are served, without errors, in a fair order, and a
person over their share of the queue gets a clear "busy" answer."""

import json
import threading
import time

from tests.api.test_contract import TXT2IMG

JOB = {**TXT2IMG, "steps": 12, "width": 96, "height": 96}


def post_in_thread(server, user: str, body: dict, results: list, lock: threading.Lock):
    def run():
        with server.client(user) as client:
            started = time.monotonic()
            response = client.post("/sdapi/v1/txt2img", json=body)
            with lock:
                results.append((user, response.status_code, time.monotonic(), time.monotonic() - started,
                                response.json()))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_eight_clients_are_all_served_and_a_heavy_user_does_not_block_the_others(server):
    results, lock = [], threading.Lock()
    # "heavy" queues four jobs first; then seven colleagues send one each, all at once.
    heavy = [post_in_thread(server, "heavy", {**JOB, "seed": 100 + i}, results, lock) for i in range(4)]
    deadline = time.monotonic() + 30
    while len(server.engine.jobs_of("heavy")) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    others = [post_in_thread(server, f"user{i}", {**JOB, "seed": i}, results, lock) for i in range(7)]
    for thread in heavy + others:
        thread.join(300)
    assert len(results) == 11
    assert all(status == 200 for _, status, *_ in results), [r[1:2] + (r[4],) for r in results if r[1] != 200]
    finished = {}
    for user, _, at, seconds, body in results:
        finished.setdefault(user, []).append(at)
        assert len(body["images"]) == 1 and json.loads(body["info"])["all_seeds"]
    last_heavy = max(finished["heavy"])
    # First come, first served would finish all four of heavy's jobs before any colleague's.
    # Taking turns, every colleague is done before heavy's last job.
    assert all(max(finished[f"user{i}"]) < last_heavy for i in range(7))
    order = [user for user, *_ in sorted(results, key=lambda r: r[2])]
    assert order.count("heavy") == 4 and order[-1] == "heavy"
    print("finish order:", order)
    print("seconds per request:", sorted(round(r[3], 2) for r in results))


def test_one_person_over_their_share_of_the_queue_gets_a_busy_answer(server):
    results, lock = [], threading.Lock()
    slow = {**JOB, "steps": 30}
    first = post_in_thread(server, "bob", slow, results, lock)
    deadline = time.monotonic() + 30
    while not server.engine.jobs_of("bob") and time.monotonic() < deadline:
        time.sleep(0.01)
    more = [post_in_thread(server, "bob", {**slow, "seed": i}, results, lock) for i in range(6)]
    for thread in [first, *more]:
        thread.join(300)
    statuses = sorted(status for _, status, *_ in results)
    assert 503 in statuses and statuses.count(200) >= 4  # queue_per_user is 4 for this server
    busy = next(body for _, status, _, _, body in results if status == 503)
    assert "You already have 4 jobs waiting" in busy["detail"]
    with server.client("bob") as bob:
        assert bob.post("/sdapi/v1/txt2img", json={**TXT2IMG, "steps": 2}).status_code == 200
