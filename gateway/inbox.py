"""The gateway's inbox: each message a worker sends (``shm.wire``) goes to its one reader.

ATTACH goes to the attach desk (``gateway.attach``); HELLO, HEARTBEAT, UNHEALTHY and FATAL to
the supervisor (the copy's lifecycle); RESULT and ERROR to the server the copy serves, which
the supervisor knows (``Supervisor.observer``). A message from a copy the supervisor does not
run (stopped, or never started) is dropped.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.attach import AttachDesk
from gateway.link import WorkerLink
from gateway.model_server import ModelServer
from shm import wire
from supervisor.supervisor import Supervisor

log = logging.getLogger("inferoxy.gateway")

MAX_MESSAGE_CHARS = 2000  # of a worker's error message kept


class WorkerInbox:
    def __init__(self, supervisor: Supervisor[ModelServer], link: WorkerLink, run_dir: str,
                 attach_desk: AttachDesk | None) -> None:
        self.supervisor = supervisor
        self.link = link
        self.run_dir = run_dir
        self.attach_desk = attach_desk

    def on_message(self, kind: bytes, body: dict[str, Any]) -> None:
        if kind == wire.ATTACH:
            if self.attach_desk is not None:
                self.attach_desk.on_attach(body)
            return
        copy_id = body.get("copy")
        if not isinstance(copy_id, int):
            return
        supervisor = self.supervisor
        if kind == wire.HELLO:
            self._on_hello(copy_id, body)
            return
        copy = supervisor.on_message(copy_id)
        if copy is None:
            return
        if kind == wire.HEARTBEAT:
            supervisor.on_heartbeat(copy_id, body.get("busy_s"))
        elif kind == wire.UNHEALTHY:
            supervisor.on_unhealthy(copy_id, _message(body))
        elif kind == wire.FATAL:
            supervisor.on_fatal(copy_id, _message(body))
        elif kind in (wire.RESULT, wire.ERROR):
            server = supervisor.observer(copy_id)
            if server is None:
                return
            if kind == wire.RESULT:
                server.on_result(copy, body)
            else:
                server.on_error(copy, body)

    def _on_hello(self, copy_id: int, body: dict[str, Any]) -> None:
        inbox = body.get("inbox")
        copy = self.supervisor.copies.get(copy_id)
        if copy is None or not wire.in_run_dir(self.run_dir, inbox):
            log.warning("copy %s said HELLO without a batch socket in the run directory",
                        copy_id)
            return
        assert isinstance(inbox, str)
        if copy.inbox != inbox:
            self.link.connect_copy(copy_id, inbox)
            copy.inbox = inbox
        self.supervisor.on_hello(copy_id, body.get("pid"))


def _message(body: dict[str, Any]) -> str:
    return str(body.get("message", ""))[:MAX_MESSAGE_CHARS]
