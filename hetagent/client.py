"""`hetagent.Client`: submit agents and runs to a `hetagent serve` over HTTP, or run them in this
process with `Client("local")`, and follow them live.

Async first: `submit`, `get`, `cancel`, `result` and `events` (an async iterator of the run's
events) are coroutines; each has a blocking twin with a `_sync` suffix (`submit_sync`, ...,
`events_sync` a plain iterator) that works with or without a running event loop.

    client = hetagent.Client("http://127.0.0.1:8080", token="...")
    run = client.submit_sync("examples/agents/quickstart.yaml", {"question": "..."})
    print(client.result_sync(run)["outputs"])

`Client("local")` runs agents on the embedded engine inside this process (tenant `default`,
the run store at `$HETAGENT_DB`); its runs stop when the client closes. The token of an HTTP
client comes from `token=`, else `$HETAGENT_TOKEN`, else the file `hetagent serve` writes when
it generates one.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8080"
FINISHED = ("succeeded", "failed", "cancelled")


def token_file() -> Path:
    """Where `hetagent serve` keeps the token it generated when none was configured."""
    default = Path.home() / ".local" / "share" / "hetagent" / "token"
    return Path(os.environ.get("HETAGENT_TOKEN_FILE") or default)


class ClientError(Exception):
    """The server refused a request: `status` and its one-line `detail`."""

    def __init__(self, status: int, detail: str, errors: list[dict[str, str]] | None = None):
        super().__init__(f"{status}: {detail}")
        self.status, self.detail, self.errors = status, detail, errors or []


class RunFailed(Exception):
    """`result()` of a run that failed or was cancelled; `run` is the run as the API shows it."""

    def __init__(self, run: dict[str, Any]):
        super().__init__(f"run {run['id']} {run['status']}: {run.get('error') or ''}".strip())
        self.run = run


class Client:
    """A connection to a hetagent service (`url`) or an in-process one (`"local"`)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        cluster: str | Path | None = None,
        db: str | None = None,
    ):
        self.url = url.rstrip("/")
        self.local = url == "local"
        self.timeout = timeout
        self._cluster, self._db = cluster, db
        self._token = token
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._http: dict[asyncio.AbstractEventLoop, Any] = {}  # one httpx client per loop
        self._service: Any = None  # local: the in-process service, made on first use
        if not self.local and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"client URL {url!r}: give http(s)://HOST:PORT or 'local'")

    # -- the API (async) -------------------------------------------------------------------

    async def put_agent(self, agent: Any) -> str:
        """Store an agent on the service (a YAML/JSON file, an `AgentGraph`, a `Graph`, or a
        document as a dict); returns its name."""
        document = _document(agent, absolute_paths=self.local)
        if self.local:
            reply = await self._on_service(
                lambda s: asyncio.to_thread(s.put_agent, "default", document)
            )
        else:
            reply = await self._request("POST", "/v1/agents", json=document)
        return reply["name"]

    async def submit(self, agent: Any, inputs: dict[str, Any] | None = None) -> str:
        """Start a run of `agent` (a stored agent's name, or anything `put_agent` takes, which
        is stored first); returns the run id at once."""
        name = agent if _is_name(agent) else await self.put_agent(agent)
        if self.local:
            return await self._on_service(lambda s: s.submit("default", name, inputs or {}))
        reply = await self._request(
            "POST", "/v1/runs", json={"agent": name, "inputs": inputs or {}}
        )
        return reply["id"]

    async def get(self, run_id: str) -> dict[str, Any]:
        """The run: status, outputs, error, steps (pool, times, tokens), cost."""
        if self.local:
            return await self._on_service(lambda s: _sync(s.run, "default", run_id))
        return await self._request("GET", f"/v1/runs/{run_id}")

    async def cancel(self, run_id: str) -> dict[str, Any]:
        if self.local:
            return await self._on_service(lambda s: s.cancel("default", run_id))
        return await self._request("DELETE", f"/v1/runs/{run_id}")

    async def events(self, run_id: str, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """The run's events (`run.*`, `step.*`) as they happen, ending when the run finishes."""
        if self.local:
            await self.get(run_id)  # a run that is not there: ClientError 404 now
            service = await self._on_loop(self._local_service())
            stream = service.follow("default", run_id, after)
            while True:
                future = asyncio.run_coroutine_threadsafe(_next(stream), self._background())
                item = await asyncio.wrap_future(future)
                if item is _END:
                    return
                yield item
        async for event in self._sse(f"/v1/runs/{run_id}/events?after={after}"):
            yield event

    async def result(self, run_id: str) -> dict[str, Any]:
        """Wait for the run to finish; its outputs on success, else RunFailed."""
        async for _ in self.events(run_id):
            pass
        run = await self.get(run_id)
        if run["status"] != "succeeded":
            raise RunFailed(run)
        return run

    async def aclose(self) -> None:
        for loop, http in list(self._http.items()):
            if loop is _running_loop():
                await http.aclose()
                self._http.pop(loop)
        if self._service is not None:
            service, self._service = self._service, None
            await self._on_loop(service.runtime.close())
            service.store.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # -- the same, blocking ------------------------------------------------------------------

    def put_agent_sync(self, agent: Any) -> str:
        return self._block(self.put_agent(agent))

    def submit_sync(self, agent: Any, inputs: dict[str, Any] | None = None) -> str:
        return self._block(self.submit(agent, inputs))

    def get_sync(self, run_id: str) -> dict[str, Any]:
        return self._block(self.get(run_id))

    def cancel_sync(self, run_id: str) -> dict[str, Any]:
        return self._block(self.cancel(run_id))

    def result_sync(self, run_id: str) -> dict[str, Any]:
        return self._block(self.result(run_id))

    def events_sync(self, run_id: str, after: int = 0) -> Iterator[dict[str, Any]]:
        stream = self.events(run_id, after)
        while True:
            item = self._block(_next(stream))
            if item is _END:
                return
            yield item

    def close(self) -> None:
        self._block(self.aclose())
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            assert self._thread is not None
            self._thread.join()
            self._loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- mechanics -----------------------------------------------------------------------------

    def _background(self) -> asyncio.AbstractEventLoop:
        """A private event loop in a thread: where blocking calls and the local runtime run."""
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="hetagent-client", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def _block(self, work: Awaitable[T]) -> T:
        future: Future = asyncio.run_coroutine_threadsafe(_awaited(work), self._background())
        return future.result()

    async def _on_loop(self, work: Awaitable[T]) -> T:
        """Run `work` on the background loop, from whichever loop the caller is on."""
        loop = self._background()
        if _running_loop() is loop:
            return await work
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_awaited(work), loop))

    async def _on_service(self, call: Callable[[Any], Any]) -> Any:
        """`call(service)` on the background loop, API errors raised as ClientError."""

        async def run() -> Any:
            from hetagent.orchestrator.server import ApiError

            try:
                return await call(await self._local_service())
            except ApiError as error:
                raise ClientError(error.status, error.message, error.errors) from None

        return await self._on_loop(run())

    async def _local_service(self) -> Any:
        if self._service is None:
            self._service = _local_service(self._cluster, self._db)
        return self._service

    def _headers(self) -> dict[str, str]:
        token = self._token or os.environ.get("HETAGENT_TOKEN")
        if token is None and token_file().is_file():
            token = token_file().read_text().strip()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _client(self) -> Any:
        import httpx

        loop = _running_loop()
        if loop not in self._http:
            self._http[loop] = httpx.AsyncClient(
                base_url=self.url, timeout=self.timeout, headers=self._headers()
            )
        return self._http[loop]

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = await self._client().request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise ClientError(0, f"cannot reach {self.url}: {error}") from None
        return _reply(response.status_code, response.content)

    async def _sse(self, path: str) -> AsyncIterator[dict[str, Any]]:
        """Server-sent events, reconnecting after a dropped connection from the last id seen."""
        import httpx

        last: int | None = None
        for _attempt in range(10):
            headers = {"Last-Event-ID": str(last)} if last is not None else {}
            try:
                async with self._client().stream(
                    "GET", path, headers=headers, timeout=httpx.Timeout(self.timeout, read=None)
                ) as response:
                    if response.status_code != 200:
                        _reply(response.status_code, await response.aread())
                    async for event in _parse_sse(response.aiter_lines()):
                        last = event["id"]
                        yield event
                    return
            except (httpx.TransportError, httpx.RemoteProtocolError):
                await asyncio.sleep(0.5)  # the server restarted or the network blipped
        raise ClientError(0, f"lost the event stream of {self.url}{path}")


_END = object()


async def _next(stream: AsyncIterator[Any]) -> Any:
    try:
        return await anext(stream)
    except StopAsyncIteration:
        return _END


async def _awaited(work: Awaitable[T]) -> T:
    return await work


async def _sync(function: Callable[..., T], *args: Any) -> T:
    """A plain call as a coroutine (to run on the background loop)."""
    return function(*args)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _reply(status: int, body: bytes) -> Any:
    try:
        data = json.loads(body) if body else None
    except json.JSONDecodeError:
        data = None
    if status >= 400:
        detail = (
            data.get("detail") if isinstance(data, dict) else body[:200].decode(errors="replace")
        )
        errors = data.get("errors") if isinstance(data, dict) else None
        raise ClientError(status, str(detail), errors)
    return data


async def _parse_sse(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    data: list[str] = []
    async for line in lines:
        if line.startswith("data:"):
            data.append(line[5:].lstrip())
        elif not line and data:
            yield json.loads("\n".join(data))
            data = []


def _is_name(agent: Any) -> bool:
    """A stored agent's name, rather than a file, a document or a builder."""
    if not isinstance(agent, str):
        return False
    return not (agent.endswith((".yaml", ".yml", ".json")) or Path(agent).is_file())


def _document(agent: Any, *, absolute_paths: bool) -> dict[str, Any]:
    """The agent as document data. A file's relative index paths are made absolute for a local
    service (it reads the same disk); a remote one resolves them under its base directory."""
    from hetagent.spec import AgentGraph

    if isinstance(agent, dict):
        return agent
    if isinstance(agent, AgentGraph) or hasattr(agent, "to_dict"):
        return agent.to_dict()
    if isinstance(agent, str | Path):
        from hetagent.spec import SpecError, load_yaml

        path = Path(agent)
        try:
            document = load_yaml(path.read_text())
        except OSError as error:
            raise ValueError(f"cannot read the agent {path}: {error.strerror}") from None
        except SpecError as error:
            raise ValueError(f"{path}: {error}") from None
        if absolute_paths and isinstance(document, dict):
            for index in ((document.get("spec") or {}).get("indexes") or {}).values():
                if isinstance(index, dict) and isinstance(index.get("documents"), str):
                    index["documents"] = str((path.parent / index["documents"]).resolve())
        return document
    raise TypeError(f"cannot submit a {type(agent).__name__}: give a name, file, or AgentGraph")


def _local_service(cluster: str | Path | None, db: str | None) -> Any:
    """An in-process service: the embedded engine on this machine (or `cluster`'s pools)."""
    import hetagent
    from hetagent.backends.local.backend import LocalBackend
    from hetagent.orchestrator.runtime import Runtime
    from hetagent.orchestrator.serve_cli import this_machine
    from hetagent.orchestrator.server import Service
    from hetagent.orchestrator.store import RunStore

    where = hetagent.load(cluster) if cluster is not None else this_machine()
    store = RunStore(db)
    return Service(Runtime(LocalBackend(), store), store, [where], Path("/"))


__all__ = ["Client", "ClientError", "RunFailed", "token_file"]
