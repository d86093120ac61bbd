"""Admission of attached copies (``--runtime attach``): the checks, then an offer.

A worker the platform started says ATTACH (``shm.wire``). Before it may serve, the gateway
checks, in order, and refuses with the reason otherwise (the worker exits with it, so the
platform's restarts and logs show it):

* the wire protocol is this gateway's (``wire.PROTOCOL``): an image from another release is
  not half-understood;
* the gateway is not shutting down;
* the model is declared and loaded here, and the version asked for ("" = the default one) is
  one of its versions;
* the GPU: a copy uses at most one (``nvidia.com/gpu: 1``); a GPU model's copy on a gateway
  that knows its GPUs (``--gpus``, discovery, ``--simulate-gpus``) must see one of them, and a
  GPU holds at most one copy of a model (the placement rule of ``supervisor.placement``); on a
  gateway that sees no GPU (a Kubernetes gateway container requests none) each copy's GPU
  (its UUID) must differ from the model's other copies'.

The copy then goes on offer (``supervisor.attach``) to the model's copy slots; with no slot
free for it, one more is added (up to ``max_copies``, else ``ATTACH_MAX_COPIES``): the platform
decides how many copies run, and the gateway does not autoscale attached copies.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from gateway.errors import NotFound
from shm import wire
from shm.segment import unlink_matching
from supervisor.attach import Announcement, AttachRuntime, BadAnnouncement, parse_announcement
from supervisor.copy import Copy
from supervisor.lifecycle import CopyState
from supervisor.placement import CPU, Placement

if TYPE_CHECKING:
    from gateway.core import Gateway
    from gateway.model_server import ModelServer

log = logging.getLogger("inferoxy.attach")

ATTACH_MAX_COPIES = 16  # copies of one model version, when its max_copies says nothing


def gpu_index(gpu: str, uuids: dict[str, int]) -> int | None:
    """The gateway's index of the GPU a copy names: an index, or a UUID as the NVIDIA device
    plugin and ``nvidia-smi -L`` give it (``uuids``: NVML's, read at start); None: unknown."""
    if gpu.isdecimal():
        return int(gpu)
    return uuids.get(gpu)


class AttachDesk:
    def __init__(self, gateway: Gateway, runtime: AttachRuntime) -> None:
        self.gateway = gateway
        self.runtime = runtime
        self.gpu_uuids: dict[str, int] = {}  # NVML's UUID -> index (Gateway.run fills it)
        runtime.admitted = self._admitted
        runtime.gone = self._gone
        self._refused: dict[str, str] = {}  # token -> reason, so a repeated ATTACH logs once

    def on_attach(self, body: dict[str, Any]) -> None:
        """An ATTACH from the inbox (synchronous; never blocks)."""
        try:
            announcement = parse_announcement(body, self.gateway.run_dir)
        except BadAnnouncement as exc:
            token = body.get("token")
            if not isinstance(token, str) or self._refused.get(token[:64]) != str(exc):
                self._remember(str(token)[:64], str(exc))  # a worker repeats itself: log once
                log.warning("refused an attaching worker: %s", exc)
            if exc.control:
                self.runtime.refuse(exc.control, str(exc))
            return
        if self.runtime.known(announcement.token):
            return  # admitted already: its ATTACH crossed our WELCOME
        verdict = self._check(announcement)
        if isinstance(verdict, str):
            self._refuse(announcement, verdict)
            return
        server, placement = verdict
        key = (server.config.name, server.config.version)
        if not self.runtime.offer(key, announcement, placement):
            self._refuse(announcement, "too many copies are waiting to attach; try later")
            return
        offered = len(self.runtime.offers(key))
        if offered > self._free_slots(server):
            cap = server.config.max_copies or ATTACH_MAX_COPIES
            if len(server.copies) >= cap:
                self._refuse(announcement, f"model {key[0]!r} version {key[1]} has its "
                                           f"{cap} copies attached (max_copies)")
                return
            copy = self.gateway.add_copy(server)
            if copy is None:
                self._refuse(announcement, f"model {key[0]!r} takes no more copies here")

    def _refuse(self, a: Announcement, reason: str) -> None:
        if self._refused.get(a.token) != reason:
            self._remember(a.token, reason)
            log.warning("refused worker %s (pid %s on %s) for model %r: %s",
                        a.token, a.pid, a.host or "?", a.model, reason)
        self.runtime.refuse(a.control, reason)

    def _remember(self, token: str, reason: str) -> None:
        self._refused[token] = reason
        while len(self._refused) > 256:  # bounded memory of whom we told
            del self._refused[next(iter(self._refused))]

    def _check(self, a: Announcement) -> str | tuple[ModelServer, Placement]:
        gateway = self.gateway
        if a.protocol != wire.PROTOCOL:
            return (f"the worker speaks wire protocol {a.protocol}, this gateway "
                    f"{wire.PROTOCOL}: run the same Inferoxy release on both")
        if gateway.draining:
            return "the gateway is shutting down"
        declaration = gateway.declarations.get(a.model)
        if declaration is None:
            served = ", ".join(sorted(gateway.declarations)) or "none"
            return f"model {a.model!r} is not declared on this gateway (it serves: {served})"
        if a.version and a.version not in declaration.versions:
            return (f"model {a.model!r} has no version {a.version} (declared: "
                    f"{', '.join(declaration.versions)})")
        try:
            server = gateway.model(a.model, a.version or None)
        except NotFound as exc:
            return str(exc)
        config = server.config
        if len(a.gpus) > 1:
            return (f"a copy uses one GPU and this one sees {len(a.gpus)}: give each copy one "
                    "(nvidia.com/gpu: 1)")
        if not config.run_on_gpu:
            return server, CPU
        gpu = a.gpus[0] if a.gpus else ""
        taken = self._gpus_taken(server, a.token)
        if gateway.gpus:
            if not gpu:
                return (f"model {a.model!r} runs on a GPU and this copy sees none (the gateway "
                        f"has GPUs {', '.join(map(str, gateway.gpus))})")
            index = gpu_index(gpu, self.gpu_uuids)
            if index is None or index not in gateway.gpus:
                return (f"GPU {gpu} is not one of this gateway's GPUs "
                        f"({', '.join(map(str, gateway.gpus))})")
            if {gpu, str(index)} & taken:
                return f"GPU {gpu} already runs a copy of model {a.model!r}"
            simulated = gateway.settings.simulate_gpus > 0
            return server, Placement("cpu" if simulated else "cuda:0", str(index), index)
        if not gpu:
            return server, CPU  # a GPU model on a host without GPUs runs on the CPU
        if gpu in taken:
            return f"GPU {gpu} already runs a copy of model {a.model!r}"
        return server, Placement("cuda:0", gpu, None)

    def _gpus_taken(self, server: ModelServer, token: str) -> set[str]:
        """The GPUs of the model's attached copies and of its other offers."""
        name = server.config.name
        taken = {c.announcement.gpus[0] for c in self.runtime.attached.values()
                 if c.announcement.model == name and c.announcement.gpus}
        for s in self.gateway.all_servers():
            if s.config.name == name:
                key = (name, s.config.version)
                taken |= {a.gpus[0] for a, _ in self.runtime.offers(key)
                          if a.gpus and a.token != token}
        return taken | {str(i) for g in taken
                         if (i := gpu_index(g, self.gpu_uuids)) is not None}

    def _free_slots(self, server: ModelServer) -> int:
        """Copy slots of ``server`` that will take the next offer: not serving a worker."""
        return sum(1 for c in server.copies
                   if c.id not in self.runtime.attached
                   and c.state in (CopyState.STARTING, CopyState.DEAD))

    def host_of(self, copy_id: int) -> str:
        """The host an attached copy's worker runs on, as it announced itself ("" unknown)."""
        running = self.runtime.attached.get(copy_id)
        return running.announcement.host if running is not None else ""

    def _admitted(self, copy_id: int, a: Announcement, placement: Placement) -> None:
        copy: Copy | None = self.gateway.supervisor.copies.get(copy_id)
        if copy is not None:
            copy.placement = placement
        self._refused.pop(a.token, None)

    def _gone(self, prefix: str) -> None:
        self.gateway.cache.forget(prefix)
        unlink_matching(prefix)
