"""The worker of a Ray-placed instance listens on the cluster's network: it serves only the front.

The front creates a secret for its cluster and gives it to each worker it starts there (in the
environment, not on the command line that `ps` shows); every request the front sends carries it in
SECRET_HEADER. Anything else is refused with a 401 and logged.
"""

from __future__ import annotations

import hmac
import json
import logging

from gallama.protocol.errors import APIError

SECRET_HEADER = "x-gallama-cluster-secret"
SECRET_ENV = "GALLAMA_CLUSTER_SECRET"

log = logging.getLogger("gallama.worker")


class ClusterSecretRequired(APIError):
    status_code = 401
    error_type = "authentication_error"

    def __init__(self) -> None:
        super().__init__("This is a gallama worker of a Ray cluster: only its front may call it.",
                         code="cluster_secret_required")


class RequireClusterSecret:
    def __init__(self, app, secret: str):
        self.app = app
        self.secret = secret.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = next((value for name, value in scope["headers"] if name == SECRET_HEADER.encode()), b"")
        if hmac.compare_digest(given, self.secret):
            return await self.app(scope, receive, send)
        client = scope.get("client") or ("?", 0)
        log.warning("refused %s %s from %s:%s: no valid cluster secret", scope["method"], scope["path"], *client)
        body = json.dumps(ClusterSecretRequired().body(scope["path"])).encode()
        await send({"type": "http.response.start", "status": ClusterSecretRequired.status_code,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
