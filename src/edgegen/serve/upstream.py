"""Forward a request to an OpenAI-compatible upstream, passing streaming bytes straight through.

``Upstream(base_url, api_key)`` takes the OpenAI-style base URL (the part before ``/chat/completions``,
e.g. ``https://api.example.com/v1``). ``open()`` sends the client's original JSON body (so fields this
device does not know still reach a server that may) with the upstream's key, never the device's;
it returns the upstream's status, headers and a byte iterator once the response headers arrive, so
the caller can decide before committing its own response. Connection failures and timeouts become
``UpstreamError``; an upstream that answers with an error status is passed through as it is.

This module does not decide when to forward (the server does) and does not parse SSE.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from edgegen.errors import UpstreamError

log = logging.getLogger(__name__)

# Response headers worth passing on; hop-by-hop and length headers are the proxy's own business.
_PASS_HEADERS = ("content-type", "openai-processing-ms", "openai-model", "x-request-id", "retry-after")


@dataclass
class UpstreamResponse:
    status_code: int
    headers: dict[str, str]
    _response: httpx.Response

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:  # the upstream broke mid-stream: end the body, log why
            log.warning("upstream stream ended early: %s", exc)
        finally:
            await self._response.aclose()

    async def read(self) -> bytes:
        try:
            return await self._response.aread()
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream failed while answering: {exc}") from exc
        finally:
            await self._response.aclose()

    async def aclose(self) -> None:
        await self._response.aclose()


class Upstream:
    def __init__(self, base_url: str, api_key: str | None = None, *, timeout_s: float = 60.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise UpstreamError(f"upstream URL must start with http:// or https://, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        # Connecting must fail fast (that is when we fall back); reading may take a whole generation.
        timeout = httpx.Timeout(timeout_s, connect=min(5.0, timeout_s))
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout, transport=transport)

    async def open(self, path: str, body: bytes) -> UpstreamResponse:
        """POST ``body`` to ``base_url + path``; returns once the upstream's headers have arrived."""
        request = self._client.build_request(
            "POST", self.base_url + path, content=body, headers={"content-type": "application/json"})
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream {self.base_url} unreachable: {exc.__class__.__name__}") from exc
        headers = {k: v for k, v in response.headers.items() if k.lower() in _PASS_HEADERS}
        return UpstreamResponse(response.status_code, headers, response)

    async def aclose(self) -> None:
        await self._client.aclose()
