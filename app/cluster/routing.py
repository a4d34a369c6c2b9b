"""Which replica takes a request: model affinity with Ray Serve's request router.

A request for checkpoint X goes to a replica that holds X when one is free; otherwise to a replica
whose machine has the file, the least recently used first (it swaps); never to one that lacks it.
Serve tries the ranks in order and takes a free replica from the first rank that has one, so a busy
holder does not make a job wait while another worker with the file is idle.
"""

import time
from dataclasses import dataclass
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, ReplicaResult, RequestRouter, RunningReplica


@dataclass(frozen=True)
class Candidate:
    """What the router knows of a replica: what it holds and which files its machine has (None: not
    reported yet), and when it was last sent a job."""

    key: str
    holds: frozenset[str]
    files: frozenset[str] | None
    last_used: float = 0.0


def ranked(candidates: list[Candidate], checkpoint: str) -> list[list[str]]:
    """Candidate keys by preference: holders of `checkpoint`, then those with the file (least recently
    used first), then those that have not reported their files yet. No checkpoint (an upscale): the
    least recently used first."""
    by_age = sorted(candidates, key=lambda candidate: candidate.last_used)
    if not checkpoint:
        return [[candidate.key] for candidate in by_age]
    holders = [c.key for c in by_age if checkpoint in c.holds]
    having = [[c.key] for c in by_age if c.files is not None and checkpoint in c.files and c.key not in holders]
    unknown = [c.key for c in by_age if c.files is None and c.key not in holders]
    ranks = [rank for rank in (holders, *having, unknown) if rank]
    # No worker reports the file (it went away since the job was admitted): any worker, which then
    # answers with the sentence saying what is missing where, rather than a job waiting for ever.
    return ranks or [[candidate.key for candidate in by_age]]


class CheckpointRouter(RequestRouter):
    """Serve's router with Easel's `ranked`; replicas report `files` and `holds` in their routing stats."""

    def initialize_state(self, **kwargs: Any) -> None:
        self._last_used: dict[str, float] = {}
        # What this router last sent each replica: with one checkpoint per replica, what it holds once
        # that job starts, known before any report (reports come every second, jobs can be quicker).
        self._sent: dict[str, str] = {}

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        checkpoint = pending_request.metadata.multiplexed_model_id if pending_request else ""
        by_key = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        candidates = [self._candidate(replica) for replica in candidate_replicas]
        return [[by_key[key] for key in rank] for rank in ranked(candidates, checkpoint)]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult) -> None:
        self._last_used[replica_id.unique_id] = time.monotonic()
        if pending_request.metadata.multiplexed_model_id:
            self._sent[replica_id.unique_id] = pending_request.metadata.multiplexed_model_id

    def _candidate(self, replica: RunningReplica) -> Candidate:
        stats = replica.routing_stats or {}
        files = stats.get("files")
        key = replica.replica_id.unique_id
        sent = getattr(self, "_sent", {}).get(key)
        holds = {sent} if sent else set(replica.multiplexed_model_ids) | ({stats["holds"]} if stats.get("holds") else set())
        return Candidate(key, frozenset(holds), None if files is None else frozenset(files),
                         getattr(self, "_last_used", {}).get(key, 0.0))
