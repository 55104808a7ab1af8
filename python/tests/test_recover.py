"""The SDK's recovery of a task call whose connection hearthd dropped
(hearth._client.recover_task): by task id, never running a task twice."""
import asyncio
import os

import pytest

from hearth import _client
from hearth._errors import DaemonUnavailable


class FakeDaemon:
    """Answers GET /v1/tasks/ID from a script of outcomes: an exception to
    raise, a snapshot, or None for 404."""

    def __init__(self, outcomes):
        self.outcomes = list(outcomes)
        self.paths = []

    def call(self, method, path, what=None, not_found=None, **kw):
        assert method == "GET"
        self.paths.append(path)
        out = self.outcomes.pop(0)
        if isinstance(out, Exception):
            raise out
        return not_found if out is None else out


class AsyncFake(FakeDaemon):
    async def call(self, *a, **kw):
        return FakeDaemon.call(self, *a, **kw)


def down():
    return DaemonUnavailable("hearthd is not running: nothing listens on /s")


def test_a_task_that_ended_while_the_daemon_was_down_is_answered_by_id(monkeypatch):
    monkeypatch.setenv("HEARTH_RECONNECT_TIMEOUT", "30")
    fake = FakeDaemon([down(), down(), {"id": "c-1", "state": "running"}, {"id": "c-1", "state": "succeeded", "result": 3}])
    resubmits = []
    snap = _client.recover_task(fake, "c-1", down(), lambda: resubmits.append(1), "task t")
    assert snap["result"] == 3
    assert resubmits == [], "a task the daemon knows is never submitted again"
    assert fake.paths == ["/v1/tasks/c-1?wait=20"] * 4


def test_a_task_the_daemon_never_accepted_is_submitted_again_with_its_id(monkeypatch):
    monkeypatch.setenv("HEARTH_RECONNECT_TIMEOUT", "30")
    fake = FakeDaemon([down(), None])
    snap = _client.recover_task(fake, "c-2", down(), lambda: {"id": "c-2", "state": "succeeded"})
    assert snap == {"id": "c-2", "state": "succeeded"}


def test_lost_is_final_and_returned_for_the_caller_to_raise(monkeypatch):
    fake = FakeDaemon([{"id": "c-3", "state": "lost", "error": {"type": "TaskLost", "message": "m"}}])
    assert _client.recover_task(fake, "c-3", down(), lambda: None)["state"] == "lost"


def test_giving_up_names_the_task_the_wait_and_how_to_ask_later(monkeypatch):
    monkeypatch.setenv("HEARTH_RECONNECT_TIMEOUT", "0.3")
    fake = FakeDaemon([down()] * 100)
    with pytest.raises(DaemonUnavailable) as e:
        _client.recover_task(fake, "c-4", down(), lambda: None)
    m = str(e.value)
    assert "task c-4" in m and "HEARTH_RECONNECT_TIMEOUT" in m and "hearth result c-4" in m, m
    assert "nothing listens on /s" in m
    assert 2 <= len(fake.paths) < 20, "backs off between tries"


def test_zero_means_no_wait(monkeypatch):
    monkeypatch.setenv("HEARTH_RECONNECT_TIMEOUT", "0")
    fake = FakeDaemon([down()] * 5)
    with pytest.raises(DaemonUnavailable):
        _client.recover_task(fake, "c-5", down(), lambda: None)
    assert len(fake.paths) == 1


@pytest.mark.parametrize("bad", ["soon", "-1", "nan"])
def test_a_bad_timeout_is_refused_by_name(monkeypatch, bad):
    monkeypatch.setenv("HEARTH_RECONNECT_TIMEOUT", bad)
    with pytest.raises(ValueError, match="HEARTH_RECONNECT_TIMEOUT"):
        _client.reconnect_timeout()


def test_the_asyncio_form_recovers_the_same_way(monkeypatch):
    monkeypatch.setenv("HEARTH_RECONNECT_TIMEOUT", "30")
    fake = AsyncFake([down(), None])

    async def resubmit():
        return {"id": "c-6", "state": "succeeded"}

    snap = asyncio.run(_client.arecover_task(fake, "c-6", down(), resubmit))
    assert snap["state"] == "succeeded"


def test_task_ids_are_unique_and_new_in_a_forked_child():
    a, b = _client.task_id(), _client.task_id()
    assert a != b and a.startswith("c-") and not a.startswith("t-")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, _client.task_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(r, 200).decode()
    assert child.rsplit("-", 1)[0] != a.rsplit("-", 1)[0], "a forked child takes its own prefix"


def test_a_batch_the_daemon_accepted_is_answered_task_by_task(monkeypatch):
    monkeypatch.setenv("HEARTH_RECONNECT_TIMEOUT", "30")
    fake = FakeDaemon([down(), {"id": "b-0", "state": "succeeded"}, {"id": "b-1", "state": "running"},
                       {"id": "b-1", "state": "failed"}, {"id": "b-2", "state": "succeeded"}])
    resubmits = []
    snaps = _client.recover_batch(fake, "b", 3, down(), lambda: resubmits.append(1))
    assert [s["id"] for s in snaps] == ["b-0", "b-1", "b-2"] and snaps[1]["state"] == "failed"
    assert resubmits == [], "an accepted batch is never sent again"


def test_a_batch_the_daemon_never_accepted_is_sent_again_whole(monkeypatch):
    monkeypatch.setenv("HEARTH_RECONNECT_TIMEOUT", "30")
    fake = FakeDaemon([down(), None])
    snaps = _client.recover_batch(fake, "b", 3, down(), lambda: [{"id": "b-%d" % i} for i in range(3)])
    assert [s["id"] for s in snaps] == ["b-0", "b-1", "b-2"]
    assert fake.paths == ["/v1/tasks/b-0?wait=20"] * 2, "the first task says whether the batch was accepted"


def test_a_batch_task_gone_from_the_daemon_is_lost_by_name(monkeypatch):
    fake = FakeDaemon([{"id": "b-0", "state": "succeeded"}, None])
    snaps = _client.recover_batch(fake, "b", 2, down(), lambda: None)
    assert snaps[1]["state"] == "lost" and "task b-1 of batch b is no longer known" in snaps[1]["error"]["message"]
