"""The journal of analyze, calibrate and tune, and the runner of their calls, without a pipeline: a call's
identity is the hash of its arguments, a journal of another run is refused in one line naming the difference,
a torn last line is skipped, reused calls are not made again, SIGTERM stops within the grace it states, and
ranks that were asked for different calls, or one whose call raised, fail together (two gloo processes)."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from flowblending_accel.analysis.call_runner import CallRunner, Coordinator, Job, open_journal
from flowblending_accel.analysis.journal import CallJournal, JournalMismatch, call_identity, first_difference
from flowblending_accel.core.distributed import DistContext
from flowblending_accel.support.stopping import Interrupted, stop_on_sigterm

IDENTITY = {"tool": "calibrate", "target": {"target": "the embedded pair"}, "workload": {"seeds": 2}}


def test_a_calls_identity_is_its_arguments_seeds_included():
    def call(seed, prompt="a cat"):
        return {"prompt": prompt, "generator": torch.Generator().manual_seed(seed), "height": 16}

    assert call_identity(call(0)) == call_identity(call(0))
    assert call_identity(call(0))["hash"] != call_identity(call(1))["hash"]
    assert call_identity(call(0))["hash"] != call_identity(call(0, "a dog"))["hash"]
    embeddings = {"prompt_embeds": torch.ones(2, 3)}
    assert call_identity(embeddings)["hash"] != call_identity({"prompt_embeds": torch.ones(2, 3) * 2})["hash"]
    assert call_identity(call(7)) | {"hash": None} == {
        "hash": None,
        "prompt": "a cat",
        "seeds": [7],
        "height": 16,
    }


def test_jobs_are_journalled_as_they_finish_and_reused_by_the_next_run(tmp_path):
    made = []

    def make(job):
        made.append(job.index)
        return {"score": [0.5 + job.index], "pair": (1, 2)}

    jobs = [Job({"pass": "verify", "schedule": "L40-S40-L20"}, i, {"hash": str(i)}) for i in range(3)]
    first = CallRunner(open_journal(CallJournal(tmp_path, IDENTITY), Coordinator()))
    results = first.run(jobs, make)
    assert made == [0, 1, 2] and results[2] == {"score": [2.5], "pair": [1, 2]}  # as a resumed run reads it
    (tmp_path / "journal" / "journal.rank-0.jsonl").open("a").write('{"schema": "flowblending-acc')  # torn
    again = CallRunner(open_journal(CallJournal(tmp_path, IDENTITY), Coordinator()))
    assert again.run([*jobs, Job({"pass": "verify", "schedule": "L100"}, 0, {"hash": "0"})], make) == [
        *results,
        {"score": [0.5], "pair": [1, 2]},
    ]
    assert made == [0, 1, 2, 0] and again.reused == 3 and again.made == 1 and again.used == 4
    text = (tmp_path / "journal" / "journal.rank-0.jsonl").read_text()
    kinds = [json.loads(line)["kind"] for line in text.splitlines() if line.endswith("}")]
    assert kinds.count("run") == 2 and kinds.count("call") == 4  # a run line per (re)start


def test_a_journal_of_another_run_is_refused_in_one_line_naming_the_difference(tmp_path):
    open_journal(CallJournal(tmp_path, IDENTITY), Coordinator())
    other = {**IDENTITY, "workload": {"seeds": 3}}
    with pytest.raises(JournalMismatch) as refused:
        open_journal(CallJournal(tmp_path, other), Coordinator())
    message = str(refused.value)
    assert "\n" not in message and "workload.seeds: the journal's 2, this run's 3" in message
    assert "--overwrite to discard it" in message
    open_journal(CallJournal(tmp_path, other), Coordinator(), overwrite=True)  # discarded, then started
    with pytest.raises(ValueError, match="--resume: .* holds no journal to resume"):
        open_journal(CallJournal(tmp_path / "empty", IDENTITY), Coordinator(), resume=True)
    assert first_difference({"a": {"b": [1]}}, {"a": {"b": [1]}}) is None


def test_sigterm_stops_between_calls_or_abandons_the_call_in_flight_after_the_grace(tmp_path):
    journal = open_journal(CallJournal(tmp_path, IDENTITY), Coordinator())
    jobs = [Job({"pass": "x"}, i, {"hash": str(i)}) for i in range(4)]
    started = threading.Event()

    def slow(job):  # the second call never ends by itself: SIGTERM's grace must abandon it
        if job.index == 1:
            started.set()
            while True:
                time.sleep(0.01)
        return {"index": job.index}

    sender = threading.Thread(target=lambda: started.wait(60) and os.kill(os.getpid(), signal.SIGTERM))
    sender.start()
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_sigterm(grace=0.2) as stop, pytest.raises(Interrupted, match="did not finish within 0.2 s"):
        CallRunner(journal, stop=stop).run(jobs, slow)
    sender.join()
    assert set(journal.done) == {jobs[0].key}  # the finished call is journalled, the abandoned one is not
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back

    def quick(job):
        if job.index == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives in a call that finishes well inside the grace
        return {"index": job.index}

    with stop_on_sigterm(grace=30) as stop, pytest.raises(Interrupted, match="between two calls"):
        CallRunner(journal, stop=stop).run(jobs, quick)
    assert {jobs[i].key for i in (0, 1, 2)} <= set(journal.done) and jobs[3].key not in journal.done


def _ranks_worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    found = {}
    try:
        coordinator = Coordinator(DistContext(rank, world))
        folder = Path(out).parent / "journalled"
        try:  # rank 1 was given other settings (another prompts file on its node, say)
            open_journal(CallJournal(folder, {**IDENTITY, "rank": rank}, rank, world), coordinator)
        except ValueError as error:
            found["other run"] = str(error)
        journal = open_journal(CallJournal(folder, IDENTITY, rank, world), coordinator)  # both see the folder
        runner = CallRunner(journal, coordinator)
        jobs = [Job({"pass": "x"}, i, {"hash": str(i)}) for i in range(5)]
        made = []
        results = runner.run(jobs, lambda job: made.append(job.index) or {"index": job.index})
        found["dealt"] = made
        found["results"] = [r["index"] for r in results]
        found["files"] = sorted(path.name for path in journal.files())  # each rank appends its own
        one = [Job({"pass": "one"}, 0, {"hash": "0"})]  # a list of one call goes to the next rank
        found["next"] = runner.run(one, lambda job: {"by": rank})[0]["by"]
        for name, asked in {
            "disagree": [Job({"pass": "y", "rank": rank}, 0, {"hash": "0"})],
            "raised": [Job({"pass": "z"}, i, {"hash": str(i)}) for i in range(2)],
        }.items():
            try:
                runner.run(asked, lambda job: 1 / 0 if rank == 1 else {"ok": True})
                found[name] = None
            except Exception as error:  # noqa: BLE001 - what each rank raised is the result
                found[name] = f"{type(error).__name__}: {error}"
    finally:
        torch.save(found, f"{out}.{rank}")
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_ranks_share_the_calls_and_fail_together(tmp_path):
    mp.spawn(_ranks_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2, join=True)
    found = [torch.load(tmp_path / f"out.{rank}") for rank in (0, 1)]
    for rank in (0, 1):
        assert "ranks disagree on the run (rank: rank 0's 0, rank 1's 1)" in found[rank]["other run"]
        assert found[rank]["files"] == ["journal.rank-0.jsonl", "journal.rank-1.jsonl"]
    assert [f["dealt"] for f in found] == [[0, 2, 4], [1, 3]]  # round-robin: at most one call apart
    assert found[0]["results"] == found[1]["results"] == [0, 1, 2, 3, 4]
    assert found[0]["next"] == found[1]["next"] == 1  # five calls dealt before: the sixth is rank 1's
    for rank in (0, 1):
        assert "ranks disagree on the calls to make" in found[rank]["disagree"]
    assert found[1]["raised"].startswith("ZeroDivisionError")  # its own error where it failed
    assert found[0]["raised"] == "RuntimeError: rank 1: division by zero"
