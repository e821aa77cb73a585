"""Actors that grow memory of a chosen kind on purpose, for the memory-limit and leak tests:
anonymous memory (heap it keeps) or file-backed memory (pages of a file it maps)."""

from __future__ import annotations

import mmap
import os
import time

from actors.base import Actor

MB = 1024 * 1024
PAGE = mmap.PAGESIZE


class AnonGrower(Actor):
    """Keeps options["mb_per_s"] more heap every second (every page touched), up to
    options["max_mb"] if given. options["report"] says how it accounts for it in its stats:
    "expected_memory_bytes" (the hoard, as memory held by design), "live_keys" (the hoard
    as that many keys of the supervisor's measured size), or nothing."""

    def setup(self) -> None:
        opts = self.spec.options
        self.rate = float(opts.get("mb_per_s", 1.0))
        self.max_bytes = float(opts.get("max_mb", float("inf"))) * MB
        self.report = opts.get("report")
        self.bytes_per_key = int(opts.get("bytes_per_key", 100))
        self.hoard: list[bytes] = []
        self.size = 0
        self.last = time.monotonic()

    def next_deadline(self, now: float) -> float:
        return now + 0.05

    def tick(self, now: float) -> None:
        grow = int(min((now - self.last) * self.rate * MB, self.max_bytes - self.size))
        if grow >= PAGE:
            self.hoard.append(os.urandom(16) * (grow // 16))  # not a shared constant page
            self.size += grow
            self.last = now
        elif self.size >= self.max_bytes:
            self.last = now

    def stats(self) -> dict:
        out: dict = {"hoard_mb": round(self.size / MB, 1)}
        if self.report == "expected_memory_bytes":
            out["expected_memory_bytes"] = self.size
        elif self.report == "live_keys":
            out["live_keys"] = self.size // self.bytes_per_key
        return out


class FileMapper(Actor):
    """Appends options["mb_per_s"] to a file in data_dir every second, up to options["max_mb"],
    maps each new part and reads a byte of every page: its RSS grows by file-backed pages
    only (page cache it maps), its anonymous memory not at all."""

    CHUNK = MB  # written in pieces this big, so the buffer itself stays small

    def setup(self) -> None:
        opts = self.spec.options
        self.rate = float(opts.get("mb_per_s", 10.0))
        self.max_bytes = int(float(opts.get("max_mb", 200.0)) * MB)
        self.path = self.config.path(self.config.data_dir) / f"{self.name}-{os.getpid()}.map"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self.buffer = os.urandom(self.CHUNK)
        self.maps: list[mmap.mmap] = []
        self.size = 0
        self.touched = 0
        self.last = time.monotonic()

    def next_deadline(self, now: float) -> float:
        return now + 0.05

    def tick(self, now: float) -> None:
        if self.size >= self.max_bytes:
            return
        grow = min(int((now - self.last) * self.rate * MB), self.max_bytes - self.size)
        grow -= grow % self.CHUNK
        if grow <= 0:
            return
        for offset in range(self.size, self.size + grow, self.CHUNK):
            os.pwrite(self.fd, self.buffer, offset)
        view = mmap.mmap(self.fd, grow, access=mmap.ACCESS_READ, offset=self.size)
        for page in range(0, grow, PAGE):
            self.touched += view[page]  # a read maps the page: RssFile, not RssAnon
        self.maps.append(view)
        self.size += grow
        self.last = now

    def stats(self) -> dict:
        return {"mapped_mb": round(self.size / MB, 1)}

    def teardown(self) -> None:
        for view in self.maps:
            view.close()
        os.close(self.fd)
        self.path.unlink(missing_ok=True)
