"""Messages on every socket: msgpack maps with a protocol version and a type tag.

Decoding validates types and sizes in one step (msgspec); a frame that fails is a
ProtocolError, which every receiver counts and drops. Nothing here pickles.

Messages and what they carry are kept out of the cyclic garbage collector (gc=False):
they hold only strings, numbers and lists of them, so they cannot form a cycle, and a
batch of tracked Items cost the dedupe actor twice as much to decode.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import msgspec

from actors.errors import ProtocolError

PROTOCOL_VERSION = 1
# The largest frame any receiver takes. Senders cut batches by their exact encoded size
# (fit_batches), so no legal item can push a frame over it.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Room a batch message needs beyond its items (tag, version, request id, list header...).
FRAME_OVERHEAD_BYTES = 1024
# The ZMQ_MAXMSGSIZE backstop on every socket: libzmq drops the connection (silently to
# the sender) past it, so it sits well above what any receiver's codec accepts.
SOCKET_MAX_BYTES = 2 * MAX_MESSAGE_BYTES

Key = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
ShortText = Annotated[str, msgspec.Meta(max_length=2048)]
LongText = Annotated[str, msgspec.Meta(max_length=16384)]
LinkText = Annotated[str, msgspec.Meta(max_length=8192)]  # a link is never cut
Ticker = Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
Score = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Sentiment = Annotated[float, msgspec.Meta(ge=-1.0, le=1.0)]


class Item(msgspec.Struct, kw_only=True, gc=False):
    """One news item or filing, as the fetcher saw it."""

    key: Key  # the dedupe key: "sec:<accession>" or the normalised link
    title: ShortText
    link: LinkText
    source: ShortText  # feed name
    kind: Literal["pr", "sec"]
    published: float | None = None  # epoch seconds, None when the feed gave none
    fetched_at: float = 0.0
    summary: LongText = ""
    tickers: list[Ticker] = []
    form: ShortText | None = None  # SEC form type, e.g. "8-K" or "8-K/A"
    cik: ShortText | None = None  # 10-digit, zero padded
    signature: ShortText | None = None  # cross-wire copy signature, when known
    holder: ShortText | None = None  # Schedule 13D/G: who filed it (the issuer is the news)


class Analysis(msgspec.Struct, kw_only=True, gc=False):
    """What a classifier says of an item."""

    category: ShortText
    score: Score
    sentiment: Sentiment
    tickers: list[Ticker] = []
    summary: ShortText = ""
    keywords: list[ShortText] = []
    material: bool = True
    provider: ShortText = "rules"


class Message(msgspec.Struct, tag_field="t", kw_only=True, gc=False):
    v: int = PROTOCOL_VERSION


# Data plane ---------------------------------------------------------------


# Items per Deliver frame, and frames queued on each side of the link. PUSH spreads frames,
# not items, over the llm instances, so a batch is cut into at least one chunk per instance.
DELIVER_CHUNK = 100
DELIVER_HWM = 100


class Delivery(msgspec.Struct, kw_only=True, gc=False):
    item: Item
    attempt: int  # how many times the item has been sent, this time included


class Deliver(Message, tag="deliver", kw_only=True):
    """dedupe -> llm: claimed items. Several share a frame: a frame per item cost the
    dedupe actor more than claiming the item did."""

    items: Annotated[list[Delivery], msgspec.Meta(min_length=1, max_length=10000)]


class Classified(Message, tag="classified", kw_only=True):
    """llm -> alert."""

    item: Item
    analysis: Analysis
    attempt: int


class Ack(Message, tag="ack", kw_only=True):
    """alert -> dedupe: these keys are finished."""

    keys: Annotated[list[Key], msgspec.Meta(max_length=10000)]
    # held: not finished, but in the alert actor's hands while its journal is away; the
    # lease is renewed without counting a send (no dead letter because a disk was full).
    outcome: Literal["delivered", "filtered", "held"]


class Claim(Message, tag="claim", kw_only=True):
    """request on the dedupe RPC socket: claim these items, tell me which were new.

    The reply comes only after the claim is committed, so a fetcher that holds a batch
    until it is answered loses nothing when the dedupe actor dies (Titanic)."""

    req_id: int = 0
    items: Annotated[list[Item], msgspec.Meta(max_length=10000)]
    # Feeds whose poll this claim completes (their last batch, or an empty one): dedupe
    # records that each has been polled, for fetch.first_poll.
    polled: Annotated[list[ShortText], msgspec.Meta(max_length=10000)] = []


class Claimed(Message, tag="claimed", kw_only=True):
    """dedupe -> fetcher: the claim is committed (new: which keys were new), or it was
    refused (error set, nothing recorded). A refused claim is split or dropped, counted,
    never sent again as it was; with retry it is sent again later (the store is away)."""

    req_id: int = 0
    new: list[Key] = []
    error: ShortText | None = None
    retry: bool = False  # with error: a passing condition (store unavailable); send it later


class FeedLease(Message, tag="feed_lease", kw_only=True):
    """fetcher -> dedupe (RPC socket), with several hosts sharing PostgreSQL: take or renew
    the leases of these feeds for holder, for ttl_s, or (release) give them up. A feed is
    polled only by the fetcher holding its lease, so one host polls it at a time."""

    req_id: int = 0
    holder: ShortText
    feeds: Annotated[list[ShortText], msgspec.Meta(max_length=10000)] = []
    ttl_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    release: bool = False
    # Feeds of these paused on this host: they stay with holder while it lives and holds
    # them, unpolled, instead of moving to another host that would poll them.
    paused: Annotated[list[ShortText], msgspec.Meta(max_length=10000)] = []


class FeedLeased(Message, tag="feed_leased", kw_only=True):
    """dedupe -> fetcher: the feeds holder holds now (error set: the store is away, nothing
    taken; the fetcher keeps what it held until those leases run out). handover: feeds
    shared to it that another fetcher gives up at its next renewal: ask again soon."""

    req_id: int = 0
    feeds: Annotated[list[ShortText], msgspec.Meta(max_length=10000)] = []
    error: ShortText | None = None
    handover: Annotated[int, msgspec.Meta(ge=0)] = 0


class RequestId(msgspec.Struct, kw_only=True, gc=False):
    """Just the request id of a frame that failed to decode, to answer it with an error."""

    req_id: int = 0


# Control plane ------------------------------------------------------------


class Heartbeat(Message, tag="hb", kw_only=True):
    """actor -> supervisor, every heartbeat interval; stats are the actor's own."""

    name: ShortText
    pid: int
    stats: dict[str, Any] = {}


class Ping(Message, tag="ping", kw_only=True):
    """supervisor -> actor: the supervisor is alive (Paranoid Pirate, both ways)."""


class Command(Message, tag="cmd", kw_only=True):
    """supervisor -> actor. "report" answers with a heartbeat carrying the token; any
    other command with an Answer carrying it."""

    command: Literal["stop", "report", "dead_letters", "reconfigure", "backup", "pause_feeds"]
    token: int = 0
    args: dict[str, Any] = {}


class Answer(Message, tag="answer", kw_only=True):
    """actor -> supervisor: the outcome of a Command, for the CLI that asked."""

    token: int
    ok: bool
    result: Any = None
    error: str | None = None


class AdminEvent(Message, tag="admin", kw_only=True):
    """actor -> supervisor, written to the admin sink by the supervisor."""

    event: ShortText
    actor: ShortText
    reason: ShortText = ""
    message: LongText = ""
    level: Literal["info", "warning", "error"] = "warning"
    at: float = 0.0


class Request(Message, tag="req", kw_only=True):
    """CLI -> supervisor control socket."""

    command: ShortText
    args: dict[str, Any] = {}


class Reply(Message, tag="rep", kw_only=True):
    ok: bool
    result: Any = None
    error: str | None = None


DataMessage = Union[Deliver, Classified, Ack, Claim, Claimed]
ControlMessage = Union[Heartbeat, Ping, Command, Answer, AdminEvent, Request, Reply]

_encoder = msgspec.msgpack.Encoder()


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


class Codec:
    """Decodes frames of the given message types, enforcing size and version."""

    def __init__(self, *types: type[Message], max_bytes: int = MAX_MESSAGE_BYTES):
        union = types[0] if len(types) == 1 else Union[types]  # type: ignore[valid-type]
        self._decoder = msgspec.msgpack.Decoder(union)
        self.max_bytes = max_bytes

    def decode(self, frame: bytes | memoryview) -> Message:
        if len(frame) > self.max_bytes:
            raise ProtocolError(f"message of {len(frame)} bytes exceeds {self.max_bytes}")
        try:
            message = self._decoder.decode(frame)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise ProtocolError(str(exc)) from None
        except RecursionError:  # free-form fields (args, stats) nested past the stack
            raise ProtocolError("message nested too deeply") from None
        except (ValueError, TypeError, OverflowError, MemoryError) as exc:
            raise ProtocolError(f"undecodable message: {type(exc).__name__}") from None
        if message.v != PROTOCOL_VERSION:
            raise ProtocolError(f"protocol version {message.v}, expected {PROTOCOL_VERSION}")
        return message


def request_id(frame: bytes | memoryview) -> int | None:
    """The req_id of a frame, read leniently (other fields ignored), or None."""
    try:
        rid = _request_id_decoder.decode(frame).req_id
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError, ValueError,
            TypeError, OverflowError):
        return None
    return rid if isinstance(rid, int) else None


_request_id_decoder = msgspec.msgpack.Decoder(RequestId)
_item_encoder = msgspec.msgpack.Encoder()


def fit_batches(entries: list, *, max_bytes: int = MAX_MESSAGE_BYTES, max_count: int = 10000,
                size_of=None):
    """Cuts entries into batches whose encoded size stays under max_bytes (with room for
    the frame around them) and whose length stays under max_count. size_of(entry) gives an
    entry's encoded size (default: its msgpack encoding). An entry too big for any frame
    alone is yielded alone; the receiver refuses it and the sender counts it."""
    budget = max_bytes - FRAME_OVERHEAD_BYTES
    measure = size_of or (lambda e: len(_item_encoder.encode(e)))
    batch: list = []
    size = 0
    for entry in entries:
        entry_size = measure(entry) + 1  # +1: the list entry's own header, at most
        if batch and (len(batch) >= max_count or size + entry_size > budget):
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += entry_size
    if batch:
        yield batch


def to_builtins(obj: Any) -> Any:
    """Plain dicts and lists, for JSON sinks and status output."""
    return msgspec.to_builtins(obj)
