"""The llm actor: classifies each new item and passes it to the alert actors.

The classifier (actors.classification.base) answers at once or later; answers go out through
the Outbox as Classified messages, in whatever order they finish. A redelivered item is
answered from the classifier's cache, at no model cost (invariant 4 in
docs/architecture.md). While model calls are under way the loop keeps turning (heartbeats,
commands); while the classifier's backlog is full, input pauses and ZeroMQ holds items
upstream.
"""

from __future__ import annotations

import logging

import zmq

from actors import protocol
from actors.base import Actor
from actors.classification import make_classifier
from actors.errors import CommandError
from actors.storage.sqlite import backup_command

log = logging.getLogger("catalyst.llm")
# One cached analysis (item key, content hash, Analysis) in memory: ~0.85 KB measured at
# 10,000 entries; the supervisor judges leaks net of the cache's size times this.
CACHED_ANALYSIS_BYTES = 900


class LLMActor(Actor):

    def setup(self) -> None:
        cfg = self.config
        # Bound first: dedupe sees the inbox while the classifier is still being made.
        self.inbox = self.socket(zmq.PULL, bind=cfg.instance_endpoint("llm_in", self.spec.index),
                                 hwm=protocol.DELIVER_HWM)
        self.out = self.outbox(self.socket(zmq.PUSH, connect=cfg.targets("alert_in")))
        self.classifier = make_classifier(cfg, name=self.name, admin=self.admin)
        self.add_reader(self.inbox, self._on_items)
        if self.classifier.wake_fd is not None:
            self.add_reader(self.classifier.wake_fd, self._on_answers)
        self.codec = protocol.Codec(protocol.Deliver)

    def _send(self, item: protocol.Item, analysis: protocol.Analysis, attempt: int) -> None:
        self.out.send(protocol.encode(
            protocol.Classified(item=item, analysis=analysis, attempt=attempt)))

    def _on_items(self) -> None:
        for _, msg in self.recv_messages(self.inbox, self.codec):
            for d in msg.items:
                analysis = self.classifier.submit(d.item, d.attempt)
                if analysis is not None:
                    self._send(d.item, analysis, d.attempt)
            if self.out.full or self.classifier.saturated():
                return  # downstream or the model backlog is full: stop reading until it drains

    def _on_answers(self) -> None:
        for answer in self.classifier.answers():
            self._send(answer.item, answer.analysis, answer.attempt)

    def tick(self, now: float) -> None:
        self.classifier.tick(now)
        self._on_answers()

    def next_deadline(self, now: float) -> float:
        return min(super().next_deadline(now), self.classifier.next_deadline(now))

    def input_paused(self) -> bool:
        return super().input_paused() or self.classifier.saturated()

    def idle(self) -> bool:
        return super().idle() and not self.classifier.busy()

    def stats(self) -> dict:
        stats = {**self.classifier.stats(), "outbox": len(self.out.frames)}
        # The analysis cache fills to llm.cache_size by design: not a leak.
        stats["expected_memory_bytes"] = int(stats.get("cache_size", 0)) * CACHED_ANALYSIS_BYTES
        return stats

    def command(self, name: str, args: dict) -> dict:
        """backup: a consistent copy of llm_cache.db, which only a classifier with a file
        (Gemini) has; the instances share it, so any one answers for all."""
        if name != "backup":
            return super().command(name, args)
        copy = getattr(self.classifier, "backup", None)
        if copy is None:
            raise CommandError(f"{self.name}: the {self.config.llm.provider} provider keeps "
                               "no file to back up")
        return {"actor": self.name, **backup_command(
            args, self.config.path(self.config.data_dir), copy)}

    def teardown(self) -> None:
        self.classifier.close()
