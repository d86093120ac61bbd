"""``inferoxy worker --model NAME --run-dir DIR``: a copy the platform starts.

The container command of a copy beside a gateway run with ``--runtime attach`` (one Pod on
Kubernetes; any supervisor elsewhere). It announces itself on the gateway's inbox (ATTACH,
``shm.wire``), waits for the answer, then is an ordinary copy: WELCOME says which model class
to load and how (the gateway's models.yaml is the one source of truth), and from HELLO on it
serves like a copy the gateway started. REFUSED ends it with status 4 and the gateway's reason.

Its life is tied to the gateway the other way round too: a control thread reads STOP and KILL
(a hung model cannot read them) and exits the process when the gateway's inbox socket is gone
or replaced (a new gateway knows nothing of this copy: the platform restarts it and it
announces itself again).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable

import zmq

from shm import messages, wire
from shm.messages import Attach, Kill, Stop, Welcome, decode_control, encode
from worker.__main__ import run, setup_logging

log = logging.getLogger("inferoxy.worker")

EXIT_REFUSED = 4
EXIT_NO_GATEWAY = 5
ANNOUNCE_EVERY_S = 1.0
NO_GPU = {"", "none", "void", "nodevfiles"}


class Refused(Exception):
    """The gateway said no; the reason is the message."""


def visible_gpus(env: dict[str, str]) -> list[str]:
    """The GPUs this process sees, as the device plugin or a supervisor set them."""
    raw = env.get("NVIDIA_VISIBLE_DEVICES") or env.get("CUDA_VISIBLE_DEVICES") or ""
    return [g.strip() for g in raw.split(",") if g.strip().lower() not in NO_GPU]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="inferoxy worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the model this copy serves")
    p.add_argument("--run-dir", required=True,
                   help="the gateway's --run-dir (mounted at the same path in both containers)")
    p.add_argument("--version", default="", help="model version (default: the gateway's "
                                                  "default version of the model)")
    p.add_argument("--gpu", action="append", default=None,
                   help="a GPU this copy uses (default: $NVIDIA_VISIBLE_DEVICES, else "
                        "$CUDA_VISIBLE_DEVICES)")
    p.add_argument("--attach-timeout-s", type=float, default=300.0,
                   help="give up (status 5) when no gateway answers this long")
    p.add_argument("--output-limit-bytes", type=int, default=2 << 30)
    return p.parse_args(argv)


def attach(args: argparse.Namespace, ctx: zmq.Context, token: str,
           control: zmq.Socket[bytes]) -> Welcome:
    """Announce until the gateway answers: its WELCOME (``Refused``, ``TimeoutError``)."""
    inbox = wire.inbox_address(args.run_dir)
    inbox_path = inbox[len("ipc://"):]
    address, control_address, _ = wire.attach_paths(args.run_dir, token)
    gpus = args.gpu if args.gpu is not None else visible_gpus(dict(os.environ))
    hello = {"token": token, "protocol": wire.PROTOCOL, "model": args.model,
             "version": args.version, "gpus": gpus, "pid": os.getpid(),
             "host": socket.gethostname(), "address": address, "control": control_address}
    out = ctx.socket(zmq.PUSH)
    out.setsockopt(zmq.LINGER, 0)
    out.setsockopt(zmq.SNDHWM, 2)  # no backlog of stale announcements for a late gateway
    out.connect(inbox)
    deadline = time.monotonic() + args.attach_timeout_s
    said_waiting = False
    try:
        while time.monotonic() < deadline:
            if os.path.exists(inbox_path):
                try:
                    out.send_multipart(encode(Attach(hello)), zmq.NOBLOCK)
                except zmq.Again:
                    pass
            elif not said_waiting:
                said_waiting = True
                log.info("waiting for a gateway in %s", args.run_dir)
            if control.poll(int(ANNOUNCE_EVERY_S * 1000)):
                try:
                    answer = decode_control(control.recv_multipart())
                except wire.WireError as exc:
                    log.warning("dropped a malformed answer from the gateway: %s", exc)
                    continue
                if isinstance(answer, Welcome):
                    return answer
                if isinstance(answer, messages.Refused):
                    raise Refused(answer.reason)
        raise TimeoutError(f"no gateway answered in {args.run_dir} within "
                           f"{args.attach_timeout_s:g}s")
    finally:
        out.close()


def _inode(path: str) -> tuple[int, int, int]:
    """Which socket file ``path`` is (a new gateway's may get a freed inode number again)."""
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1, -1)
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


def controller(control: zmq.Socket[bytes]) -> Callable[[float], bool]:
    """The heartbeat thread's pause: reads STOP (exit after the batch running) and KILL (exit
    now) while it waits. The socket is the thread's from then on (``run`` waits for it)."""

    def pause(seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not control.poll(max(1, int(left * 1000))):
                break
            try:
                order = decode_control(control.recv_multipart())
            except wire.WireError:
                continue
            if isinstance(order, Kill):
                log.error("the gateway killed this copy (hung, or missed heartbeats)")
                os.kill(os.getpid(), signal.SIGKILL)
            elif isinstance(order, Stop):
                os.kill(os.getpid(), signal.SIGTERM)  # unwinds like the SIGTERM of a pod stop
        return False

    return pause


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging(args.model, "attach")
    os.makedirs(args.run_dir, exist_ok=True)
    token = secrets.token_hex(8)
    address, control_address, lock_path = wire.attach_paths(args.run_dir, token)
    # Held while this process lives: the gateway sees the kernel drop it when we die.
    lock = os.open(lock_path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    ctx = zmq.Context()
    control_ctx = zmq.Context()  # its own: ``run`` terminates ``ctx`` while this one is open
    control = control_ctx.socket(zmq.PULL)
    control.setsockopt(zmq.LINGER, 0)
    control.bind(control_address)
    inbox_path = wire.inbox_address(args.run_dir)[len("ipc://"):]
    try:
        try:
            welcome = attach(args, ctx, token, control)
        except Refused as exc:
            log.error("the gateway refused this copy of model %s: %s", args.model, exc)
            return EXIT_REFUSED
        except TimeoutError as exc:
            log.error("%s", exc)
            return EXIT_NO_GATEWAY
        copy_id = welcome.copy
        setup_logging(args.model, copy_id)
        log.info("attached as copy %d on %s", copy_id, welcome.device)
        inode = _inode(inbox_path)
        worker_args = argparse.Namespace(
            run_dir=args.run_dir, copy_id=copy_id, model=args.model,
            entrypoint=welcome.entrypoint, device=welcome.device,
            parameters=json.dumps(welcome.parameters),
            shm_prefix=welcome.shm_prefix, output_limit_bytes=args.output_limit_bytes,
            heartbeat_s=welcome.heartbeat_s, gateway_pid=0,
            health_interval_s=welcome.health_interval_s, instance=token,
        )
        return run(worker_args, ctx, pause=controller(control),
                   gateway_gone=lambda: _inode(inbox_path) != inode)
    except KeyboardInterrupt:
        return 0
    finally:
        control.close(linger=0)
        control_ctx.term()
        for path in (address[len("ipc://"):], control_address[len("ipc://"):], lock_path):
            try:
                os.unlink(path)
            except OSError:
                pass
        os.close(lock)


if __name__ == "__main__":
    sys.exit(main())
