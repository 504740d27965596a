"""The edge server: an OpenAI-compatible HTTP API over the on-device engine, local first with an
optional upstream fallback. Needs the ``serve`` extra (FastAPI, uvicorn).

    from edgegen.serve import create_app, ServerConfig, BackgroundServer
    app = create_app("model.gguf", ServerConfig(model_id="smollm2", max_queue=8),
                     engine_options={"n_ctx": 2048})
    with BackgroundServer(app) as srv:       # or: edgegen serve model.gguf
        ...                                  # OpenAI clients use base_url=srv.url + "/v1"
"""

from __future__ import annotations

from edgegen.serve.app import create_app
from edgegen.serve.runner import BackgroundServer, serve_forever
from edgegen.serve.server import EdgeServer, ServerConfig

__all__ = ["BackgroundServer", "EdgeServer", "ServerConfig", "create_app", "serve_forever"]
