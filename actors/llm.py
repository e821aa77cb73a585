"""The llm actor: classifies each new item and passes it to the alert actors.

A redelivered item is answered from the bounded analysis cache, at no model cost
(invariant 4).
"""

from __future__ import annotations

import hashlib
import logging

import cachetools
import zmq

from actors import protocol
from actors.base import Actor
from actors.classifiers import make_classifier

log = logging.getLogger("catalyst.llm")


def content_hash(item: protocol.Item) -> str:
    """What the analysis depends on: a changed title or summary is a new analysis."""
    text = f"{item.title}\x00{item.summary}\x00{item.form or ''}".encode()
    return hashlib.blake2b(text, digest_size=12).hexdigest()


class LLMActor(Actor):
    kind = "llm"

    def setup(self) -> None:
        cfg = self.config
        self.classifier = make_classifier(cfg)
        self.cache: cachetools.TTLCache = cachetools.TTLCache(
            maxsize=cfg.llm.cache_size, ttl=cfg.llm.cache_ttl_s)
        self.inbox = self.socket(zmq.PULL, bind=cfg.instance_endpoint("llm_in", self.spec.index))
        self.out = self.outbox(self.socket(
            zmq.PUSH, connect=[cfg.instance_endpoint("alert_in", i)
                               for i in range(cfg.actors.alert.instances)]))
        self.add_reader(self.inbox, self._on_items)
        self.codec = protocol.Codec(protocol.Deliver)

    def analyse(self, item: protocol.Item) -> protocol.Analysis:
        cache_key = (item.key, content_hash(item))
        analysis = self.cache.get(cache_key)
        if analysis is not None:
            self.counters["cache_hits"] += 1
            return analysis
        analysis = self.classifier.classify(item)
        self.counters[f"classified_{analysis.provider}"] += 1
        self.cache[cache_key] = analysis
        return analysis

    def _on_items(self) -> None:
        for _, msg in self.recv_messages(self.inbox, self.codec):
            analysis = self.analyse(msg.item)
            self.out.send(protocol.encode(
                protocol.Classified(item=msg.item, analysis=analysis, attempt=msg.attempt)))
            if self.out.full:
                return  # downstream is full: stop reading until it drains

    def stats(self) -> dict:
        return {"cache_size": len(self.cache), "outbox": len(self.out.frames)}
