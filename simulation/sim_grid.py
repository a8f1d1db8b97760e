"""A Flower grid with a simulated wall clock: rounds close in simulated time, deterministically.

:class:`SimGrid` wraps the simulation engine's grid and is what the production round loop
(:class:`aggregation.rounds.RoundRunner`) talks to. It

* stamps every outgoing message's config with ``sim-time`` (the device decides its availability
  from its trace at that time) and counts the bytes each way;
* waits for *every* reply of a push (real time is meaningless here), then releases them in a
  fixed order — query replies by device, train updates by simulated arrival — so that the same
  seed gives the same round, the same aggregation order and the same results file;
* closes a train exchange like a real deadline would: the first ``target`` updates by simulated
  arrival (download + ``steps * step_s`` + upload, :meth:`simulation.traces.Traces.duration`)
  within ``round_deadline_s`` are released; the rest are held back (the round loop counts them
  as stragglers), or, when fewer than ``target`` made the deadline, answered with the error
  Flower's SuperLink gives an expired message (``MESSAGE_UNAVAILABLE``), as in a deployment;
* advances the clock: a query costs ``query_s``, a train exchange lasts until its ``target``-th
  arrival or its deadline;
* names each node by its device (``device + 1``): Flower's simulation gives nodes random ids
  every run, and the round loop orders candidates by node id, so the same seed would otherwise
  select different devices. :meth:`SimGrid.discover` asks every node its device once, before
  the first round; messages are re-addressed on the way out and replies re-labelled on the way
  in.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Error, Message, MessageType, Metadata, RecordDict
from flwr.common.constant import ErrorCode

from aggregation.rounds import GridLike
from edgefleet import flower_keys as fk
from simulation.client_app import SIM_DEVICE, SIM_TIME
from simulation.errors import ExperimentError
from simulation.traces import Traces


def _bytes(message: Message) -> int:
    if message.has_error():
        return 0
    return sum(len(a.data) for rec in message.content.array_records.values()
               for a in rec.values())


def _device(message: Message) -> int | None:
    if message.has_error():
        return None
    for cfg in message.content.config_records.values():
        d = cfg.get(SIM_DEVICE)
        if isinstance(d, int) and not isinstance(d, bool):
            return d
    return None


def _steps(message: Message) -> int:
    if message.has_error():
        return 0
    for rec in message.content.metric_records.values():
        s = rec.get(fk.STEPS)
        if isinstance(s, int | float):
            return int(s)
    return 0


def _declined(message: Message) -> bool:
    return not message.has_error() and any(
        cfg.get(fk.STATUS) == fk.STATUS_DECLINED for cfg in message.content.config_records.values())


@dataclass
class RoundTraffic:
    """What one round moved and how long it took in simulated time."""

    bytes_down: int = 0
    bytes_up: int = 0
    messages: int = 0
    sim_start: float = 0.0
    sim_end: float = 0.0
    arrivals: dict[int, float] = field(default_factory=dict)
    late: list[int] = field(default_factory=list)
    tf_loaded: bool = False


class SimGrid:
    """The wrapper described in the module notes.

    Parameters
    ----------
    grid : GridLike
        The simulation engine's grid.
    traces : Traces
        Device speeds and bandwidths.
    target : int
        Train updates that close a round (the round loop's ``target_clients``).
    timeout_s : float
        Real seconds to wait for all replies of one push before giving up.
    """

    def __init__(self, grid: GridLike, traces: Traces, target: int, timeout_s: float) -> None:
        self.grid = grid
        self.traces = traces
        self.target = target
        self.timeout_s = timeout_s
        self.clock = 0.0
        self.traffic = RoundTraffic()
        self.node_device: dict[int, int] = {}
        self._sent: dict[str, Message] = {}
        self._bytes_down: dict[str, int] = {}
        self._inbox: dict[str, Message] = {}
        self._released: set[str] = set()
        self._batches: list[set[str]] = []
        self._real: dict[int, int] = {}  # virtual node id (device + 1) -> Flower's node id
        self._virtual: dict[int, int] = {}  # Flower's node id -> virtual node id

    def discover(self, query: RecordDict) -> None:
        """Ask every node once which device it is (a query message, ``query`` its content)."""
        nodes = [int(n) for n in self.grid.get_node_ids()]
        msgs = [Message(query, n, MessageType.QUERY, ttl=self.timeout_s) for n in nodes]
        ids = [str(i) for i in self.grid.push_messages(msgs)]
        self._inbox.clear()
        self._collect(set(ids))
        for mid, m in zip(ids, msgs, strict=True):
            d = _device(self._inbox.pop(mid))
            if d is None:
                raise ExperimentError(f"node {m.metadata.dst_node_id} did not say its device")
            self._real[d + 1] = int(m.metadata.dst_node_id)
            self.node_device[d + 1] = d

    def start_round(self) -> RoundTraffic:
        """Begin a round's bookkeeping; returns the finished round's traffic record."""
        done = self.traffic
        self.traffic = RoundTraffic(sim_start=self.clock, sim_end=self.clock)
        self._sent.clear()
        self._bytes_down.clear()
        self._inbox.clear()
        self._released.clear()
        self._batches.clear()
        return done

    # --- Grid ---------------------------------------------------------------------------------
    def get_node_ids(self) -> Iterable[int]:
        return sorted(self._real) if self._real else self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = [self._readdress(m) for m in messages]
        ids = [str(i) for i in self.grid.push_messages(messages)]
        for mid, m in zip(ids, messages, strict=True):
            self._sent[mid] = m
            self._bytes_down[mid] = _bytes(m)
            self.traffic.bytes_down += self._bytes_down[mid]
            self.traffic.messages += 1
        self._batches.append(set(ids))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        ids = [str(i) for i in message_ids]
        batch = next((b for b in self._batches if set(ids) <= b), set(ids))
        self._collect(batch)
        if not batch <= self._released:
            self._release(batch)
        ready = sorted((i for i in ids if i in self._released and i in self._inbox),
                       key=self._order_key)
        return [self._relabel(self._inbox.pop(i)) for i in ready]

    def _readdress(self, m: Message) -> Message:
        """A copy of ``m`` stamped with the simulated time, to the virtual node's real node."""
        for cfg in m.content.config_records.values():
            cfg[SIM_TIME] = float(self.clock)
        virtual = int(m.metadata.dst_node_id)
        real = self._real.get(virtual, virtual)
        self._virtual[real] = virtual
        md = m.metadata
        return Message(m.content, real, md.message_type, ttl=md.ttl, group_id=md.group_id)

    def _relabel(self, reply: Message) -> Message:
        """The reply as sent by the virtual node (the round loop's name for the device)."""
        md = reply.metadata
        virtual = self._virtual.get(int(md.src_node_id), int(md.src_node_id))
        meta = Metadata(run_id=md.run_id, message_id=md.message_id, src_node_id=virtual,
                        dst_node_id=md.dst_node_id, reply_to_message_id=md.reply_to_message_id,
                        group_id=md.group_id, created_at=md.created_at, ttl=md.ttl,
                        message_type=md.message_type)
        if reply.has_error():  # Message(metadata=...) is Flower's own way to rebuild a message
            return Message(metadata=meta, error=reply.error)  # type: ignore[call-overload]
        return Message(metadata=meta, content=reply.content)  # type: ignore[call-overload]

    # --- internals ----------------------------------------------------------------------------
    def _collect(self, batch: set[str]) -> None:
        deadline = time.monotonic() + self.timeout_s
        missing = [i for i in batch if i not in self._inbox and i not in self._released]
        pause = 0.005
        while missing:
            for reply in self.grid.pull_messages(missing):
                self._inbox[str(reply.metadata.reply_to_message_id)] = reply
            missing = [i for i in missing if i not in self._inbox]
            if missing:
                if time.monotonic() > deadline:
                    raise ExperimentError(f"{len(missing)} simulated clients did not reply "
                                          f"within {self.timeout_s:.0f} s (engine.timeout_s)")
                time.sleep(pause)  # a pull of many ids costs: back off to 0.2 s
                pause = min(0.2, pause * 2)

    def _release(self, batch: set[str]) -> None:
        replies = {i: self._inbox[i] for i in batch if i in self._inbox}
        for i, m in replies.items():
            d = _device(m)
            if d is not None:
                self.node_device[self._virtual_of(i)] = d
            self.traffic.bytes_up += _bytes(m)
            if not m.has_error():
                self.traffic.tf_loaded |= any(bool(c.get("sim-tf-loaded", False))
                                              for c in m.content.config_records.values())
        kinds = {self._sent[i].metadata.message_type for i in batch}
        if kinds == {MessageType.TRAIN}:
            self._release_train(replies)
        else:
            self.clock += self.traces.cfg.query_s
            self._released |= set(replies)

    def _virtual_of(self, message_id: str) -> int:
        real = int(self._sent[message_id].metadata.dst_node_id)
        return self._virtual.get(real, real)

    def _order_key(self, message_id: str) -> tuple[float, int]:
        """Replies come out by simulated arrival, then device: a fixed order for a seed."""
        node = self._virtual_of(message_id)
        return (self.traffic.arrivals.get(node, 0.0), self.node_device.get(node, node))

    def _release_train(self, replies: dict[str, Message]) -> None:
        start = self.clock
        deadline = start + self.traces.cfg.round_deadline_s
        arrivals: list[tuple[float, int, str]] = []
        for i, m in replies.items():
            node = self._virtual_of(i)
            dev = self.node_device.get(node)
            if m.has_error() or _declined(m) or dev is None:
                self._released.add(i)  # errors and declines come back as they are
                continue
            t = start + self.traces.duration(dev, _steps(m), self._bytes_down[i], _bytes(m))
            self.traffic.arrivals[node] = t
            arrivals.append((t, dev, i))
        arrivals.sort()
        on_time = [a for a in arrivals if a[0] <= deadline][: self.target]
        self._released |= {i for _, _, i in on_time}
        late = [a for a in arrivals if a not in on_time]
        self.traffic.late = sorted(self.node_device[self._virtual_of(i)] for _, _, i in late)
        if len(on_time) >= self.target:
            self.clock = on_time[-1][0]
            return
        self.clock = deadline
        for _, _, i in late:  # the deadline passed: the SuperLink's expired-message error
            err = Message(Error(code=ErrorCode.MESSAGE_UNAVAILABLE,
                                reason="simulated deadline passed"), reply_to=self._sent[i])
            self._inbox[i] = err
            self._released.add(i)
