"""The gRPC listener (BATCHSERVE_GRPC_PORT): grpc.aio on the event loop the HTTP side runs on,
serving `inference.GRPCInferenceService` through the same data plane, and the standard health
service `grpc.health.v1` for Kubernetes' gRPC probes. Messages are limited to the HTTP body
limit (a larger one is refused RESOURCE_EXHAUSTED by grpc itself)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from app.api.context import Accounting, Keys
from app.api.grpc.generated import grpc_service_pb2_grpc
from app.api.grpc.interceptor import SERVICE, Guard
from app.api.grpc.servicer import InferenceServicer
from app.serving.dataplane import DataPlane
from app.settings import Settings

log = logging.getLogger("batchserve")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FOLLOW_S = 1.0  # how often Watch subscribers are told the readiness


class ReadinessHealth(health_aio.HealthServicer):  # type: ignore[misc]  # untyped package
    """`""` (the whole server) and the inference service are SERVING exactly while the server
    is ready (`/v2/health/ready`): NOT_SERVING while the models load, when one has no ready
    version (strict readiness), and from SIGTERM on. Check reads the readiness at the time of
    the probe; Watch follows it within FOLLOW_S."""

    def __init__(self, plane: DataPlane) -> None:
        super().__init__()
        self.plane = plane
        for service in ("", SERVICE):
            self._server_status[service] = NOT_SERVING

    async def refresh(self) -> None:
        status = SERVING if self.plane.readiness().ready else NOT_SERVING
        for service in ("", SERVICE):
            if self._server_status.get(service) != status:
                await self.set(service, status)

    async def Check(self, request: Any, context: Any) -> Any:
        await self.refresh()
        return await super().Check(request, context)

    async def follow(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(FOLLOW_S)


class GrpcServer:
    def __init__(self, plane: DataPlane, keys: Keys, accounting: Accounting) -> None:
        self.plane = plane
        self.settings: Settings = plane.settings
        self.keys = keys
        self.accounting = accounting
        self.port: int | None = None
        self._server: Any = None
        self._health: ReadinessHealth | None = None
        self._follower: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: any free port); returns the port."""
        settings = self.settings
        server = grpc.aio.server(
            interceptors=[Guard(self.plane, self.keys, self.accounting)],
            options=[
                ("grpc.max_receive_message_length", settings.max_body_bytes),
                ("grpc.max_send_message_length", -1),
                # grpc's default lets a second server bind the same port and steal half of its
                # connections; a port in use must be an error, as it is for HTTP. Several
                # workers are meant to share it: each binds it, the kernel spreads connections.
                ("grpc.so_reuseport", int(settings.workers > 1)),
            ],
        )
        register: Any = grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server
        register(InferenceServicer(self.plane, settings), server)
        self._health = ReadinessHealth(self.plane)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"gRPC: cannot listen on {address}: {exc}") from None
        if not bound:
            raise OSError(f"gRPC: cannot listen on {address}")
        await server.start()
        self._server, self.port = server, bound
        self._follower = asyncio.get_running_loop().create_task(self._health.follow())
        log.info("gRPC (inference.GRPCInferenceService, grpc.health.v1) on %s:%d", host, bound)
        return int(bound)

    async def stop(self, grace_s: float) -> None:
        """New calls are refused at once; calls in progress get `grace_s` to finish. Safe to
        call again (and concurrently): every caller waits for the one stop."""
        if self._server is None:
            return
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop(grace_s))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace_s: float) -> None:
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._follower is not None:
            self._follower.cancel()
        await self._server.stop(grace_s)
