"""The gateway's inbox: each message a worker sends (``shm.messages``) goes to its one reader.

ATTACH goes to the attach desk (``gateway.attach``); HELLO, HEARTBEAT, UNHEALTHY and FATAL to
the supervisor (the copy's lifecycle); RESULT and ERROR to the server the copy serves, which
the supervisor knows (``Supervisor.observer``). A message from a copy the supervisor does not
run (stopped, or never started) is dropped. Messages arrive decoded and checked
(``WorkerLink.run_inbox``).
"""

from __future__ import annotations

import logging

from gateway.attach import AttachDesk
from gateway.link import WorkerLink
from gateway.model_server import ModelServer
from shm import wire
from shm.messages import (
    Attach,
    Error,
    Fatal,
    FromWorker,
    Heartbeat,
    Hello,
    Result,
    Unhealthy,
)
from supervisor.supervisor import Supervisor

log = logging.getLogger("inferoxy.gateway")


class WorkerInbox:
    def __init__(self, supervisor: Supervisor[ModelServer], link: WorkerLink, run_dir: str,
                 attach_desk: AttachDesk | None) -> None:
        self.supervisor = supervisor
        self.link = link
        self.run_dir = run_dir
        self.attach_desk = attach_desk

    def on_message(self, message: FromWorker) -> None:
        if isinstance(message, Attach):
            if self.attach_desk is not None:
                self.attach_desk.on_attach(message.body)
            return
        if isinstance(message, Hello):
            self._on_hello(message)
            return
        supervisor = self.supervisor
        copy = supervisor.on_message(message.copy)
        if copy is None:
            return
        if isinstance(message, Result | Error):
            server = supervisor.observer(message.copy)
            if server is None:
                return
            if isinstance(message, Result):
                server.on_result(copy, message)
            else:
                server.on_error(copy, message)
        elif isinstance(message, Heartbeat):
            supervisor.on_heartbeat(message.copy, message.busy_s)
        elif isinstance(message, Unhealthy):
            supervisor.on_unhealthy(message.copy, message.message)
        elif isinstance(message, Fatal):
            supervisor.on_fatal(message.copy, message.message)

    def _on_hello(self, hello: Hello) -> None:
        copy = self.supervisor.copies.get(hello.copy)
        if copy is None or not wire.in_run_dir(self.run_dir, hello.inbox):
            log.warning("copy %s said HELLO without a batch socket in the run directory",
                        hello.copy)
            return
        if copy.inbox != hello.inbox:
            self.link.connect_copy(hello.copy, hello.inbox)
            copy.inbox = hello.inbox
        self.supervisor.on_hello(hello.copy, hello.pid)
