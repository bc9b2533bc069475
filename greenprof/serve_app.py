"""The HTTP side of `greenprof serve`: an OpenAI-compatible API on Starlette.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (both streamed as server-sent
events with ``"stream": true``), ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health``,
``GET /metrics`` (Prometheus text format).

Every request is validated before it is queued; a mistake gets OpenAI's error JSON
(``{"error": {"message", "type", "param", "code"}}``) with a 4xx status, is counted as
``rejected`` in the metrics and is never stored. Nothing here prints a traceback: an unexpected
failure is one line on stderr and a 500 in the same JSON shape.

**Chat template.** greenprof does not apply a model's own chat template (the built-in models
have none; tokenizer_config.json templates are not read). Messages become one prompt, one line
per message and an open assistant turn::

    system: You are terse.
    user: What is RAPL?
    assistant:

that is ``f"{role}: {content}"`` joined by newlines, then ``"\\nassistant:"``. A content given
as a list of parts keeps its text parts, joined by newlines. For exact control of the prompt,
send your own templated text to ``/v1/completions``.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from greenprof.serve_engine import Engine, Job, Outcome

#: Roles a chat message may have.
ROLES = ("system", "developer", "user", "assistant", "tool")
#: Default max_tokens: OpenAI's 16 for legacy completions; for chat, up to this many (within
#: the context).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
CHAT_DEFAULT_MAX_TOKENS = 256
MAX_BODY_BYTES = 16 << 20


class ApiError(Exception):
    """A request greenprof will not run: the status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def chat_prompt(messages: Any) -> str:
    """The documented template (see the module docs); ApiError for malformed messages."""
    if messages is None:
        raise ApiError(400, "'messages' is required: a list of {\"role\", \"content\"} objects",
                       param="messages", code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects",
                       param="messages", code="invalid_type" if not isinstance(messages, list) else "empty_array")
    lines = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise ApiError(400, f"{where} must be an object with 'role' and 'content'", param=where,
                           code="invalid_type")
        role = msg.get("role")
        if role not in ROLES:
            raise ApiError(400, f"{where}.role must be one of {', '.join(ROLES)} (got {role!r})",
                           param=f"{where}.role", code="invalid_value")
        content = msg.get("content")
        if content is None and role == "assistant":
            text = ""
        elif isinstance(content, str):
            text = content
        elif isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise ApiError(400, f"{where}.content[{j}]: only text parts ({{\"type\": \"text\", "
                                   "\"text\": ...}}) are supported", param=f"{where}.content", code="invalid_value")
                parts.append(part["text"])
            text = "\n".join(parts)
        else:
            raise ApiError(400, f"{where}.content must be a string or a list of text parts", param=f"{where}.content",
                           code="invalid_type")
        lines.append(f"{role}: {text}")
    return "\n".join(lines) + "\nassistant:"


def _whole(body: dict, name: str) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise ApiError(400, f"'{name}' must be an integer (got {v!r})", param=name, code="invalid_type")
    return int(v)


def _number(body: dict, name: str, lo: float, hi: float) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ApiError(400, f"'{name}' must be a number (got {v!r})", param=name, code="invalid_type")
    if not lo <= v <= hi:
        raise ApiError(400, f"'{name}' must be between {lo:g} and {hi:g} (got {v!r})", param=name,
                       code="invalid_value")
    return float(v)


def _flag(body: dict, name: str) -> bool:
    v = body.get(name)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise ApiError(400, f"'{name}' must be true or false (got {v!r})", param=name, code="invalid_type")
    return v


def _unsupported(body: dict, endpoint: str) -> None:
    """Parameters greenprof cannot honour: refused when set to anything but their default."""
    checks: list[tuple[str, Callable[[Any], bool], str]] = [
        ("n", lambda v: v in (None, 1), "only n=1 is supported"),
        ("stop", lambda v: v in (None, [], ""), "stop sequences are not supported"),
        ("top_p", lambda v: v is None or (not isinstance(v, bool) and v == 1), "only top_p=1 is supported"),
        ("frequency_penalty", lambda v: v in (None, 0), "penalties are not supported"),
        ("presence_penalty", lambda v: v in (None, 0), "penalties are not supported"),
        ("logit_bias", lambda v: not v, "logit_bias is not supported"),
        ("logprobs", lambda v: v in (None, False, 0) and v is not True, "logprobs are not supported"),
        ("top_logprobs", lambda v: v in (None, 0) and not isinstance(v, bool), "logprobs are not supported"),
        ("tools", lambda v: not v, "tools are not supported"),
        ("functions", lambda v: not v, "functions are not supported"),
        ("response_format", lambda v: v is None or (isinstance(v, dict) and v.get("type") == "text"),
         "only the text response format is supported"),
    ]
    if endpoint == "completions":
        checks += [("echo", lambda v: v in (None, False), "echo is not supported"),
                   ("best_of", lambda v: v in (None, 1), "only best_of=1 is supported"),
                   ("suffix", lambda v: v in (None, ""), "suffix is not supported")]
    for name, ok, why in checks:
        if name in body and not ok(body[name]):
            raise ApiError(400, f"'{name}': {why} by greenprof serve", param=name, code="unsupported_parameter")


#: A prompt longer than this many characters per token of context is first counted over such a
#: prefix (see Admission.job).
PREFIX_CHARS_PER_TOKEN = 32


class Admission:
    """Turns a request body into a :class:`Job` (or raises :class:`ApiError`)."""

    def __init__(self, model_name: str, tokenizer: Any, context_length: int | None, has_eos: bool) -> None:
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.has_eos = has_eos

    def job(self, body: Any, endpoint: str) -> "Job":
        from greenprof.serve_engine import Job

        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_type")
        model = body.get("model")
        if model is None:
            raise ApiError(400, "'model' is required", param="model", code="missing_required_parameter")
        if model != self.model_name:
            raise ApiError(404, f"the model {model!r} does not exist here: this server serves {self.model_name!r} "
                           "(GET /v1/models)", param="model", code="model_not_found")
        if endpoint == "chat.completions":
            prompt = chat_prompt(body.get("messages"))
            max_tokens = _whole(body, "max_completion_tokens")
            name = "max_completion_tokens"
            if max_tokens is None:
                max_tokens, name = _whole(body, "max_tokens"), "max_tokens"
        else:
            prompt = self._prompt(body.get("prompt"))
            max_tokens, name = _whole(body, "max_tokens"), "max_tokens"
        _unsupported(body, "chat" if endpoint == "chat.completions" else "completions")
        stream = _flag(body, "stream")
        opts = body.get("stream_options")
        if opts is not None:
            if not stream:
                raise ApiError(400, "'stream_options' is only allowed when 'stream' is true", param="stream_options",
                               code="invalid_value")
            if not isinstance(opts, dict) or not isinstance(opts.get("include_usage", False), bool):
                raise ApiError(400, "'stream_options' must be an object like {\"include_usage\": true}",
                               param="stream_options", code="invalid_type")
        temperature = _number(body, "temperature", 0.0, 2.0)
        seed = _whole(body, "seed")
        if seed is not None and not 0 <= seed < 2**63:
            raise ApiError(400, f"'seed' must be a whole number >= 0 (got {seed})", param="seed", code="invalid_value")
        ignore_eos = _flag(body, "ignore_eos")
        if max_tokens is not None and max_tokens <= 0:
            raise ApiError(400, f"'{name}' must be at least 1 (got {max_tokens})", param=name, code="invalid_value")
        ctx = self.context_length
        if max_tokens is not None and ctx is not None and max_tokens > ctx:
            raise ApiError(400, f"'{name}' is {max_tokens}, above this model's limit of {ctx} tokens "
                           "(its context length)", param=name, code="invalid_value")
        where = "messages" if endpoint == "chat.completions" else "prompt"  # the parameter errors name
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate ("\ud800"): not text the tokenizer takes
            raise ApiError(400, f"the {'messages hold' if where == 'messages' else 'prompt holds'} "
                           f"a character that is not valid Unicode ({e.object[e.start:e.end]!r} at "
                           f"{e.start}): send UTF-8 text", param=where, code="invalid_value") from None
        if ctx is not None and len(prompt) > ctx * PREFIX_CHARS_PER_TOKEN:
            # a prompt far longer than the context: tokenizing it whole would hold the
            # interpreter (the tokenizer keeps the GIL) for seconds; a prefix settles it
            head = prompt[:ctx * PREFIX_CHARS_PER_TOKEN]
            n_head = len(self.tokenizer.encode(head).ids)
            if n_head >= 2 * ctx:  # twice the context in a prefix: the whole is over it
                raise ApiError(400, f"this model's maximum context length is {ctx} tokens, and the prompt's first "
                               f"{len(head)} characters alone are {n_head}: shorten it", param=where,
                               code="context_length_exceeded")
        ids = self.tokenizer.encode(prompt).ids
        n_prompt = len(ids)
        if n_prompt == 0:
            raise ApiError(400, "the prompt encodes to zero tokens: send some text", param=where,
                           code="invalid_value")
        if ctx is not None and n_prompt >= ctx:
            raise ApiError(400, f"this model's maximum context length is {ctx} tokens, and the prompt alone is "
                           f"{n_prompt}: shorten it", param=where, code="context_length_exceeded")
        if max_tokens is None:
            room = (ctx - n_prompt) if ctx is not None else None
            default = CHAT_DEFAULT_MAX_TOKENS if endpoint == "chat.completions" else COMPLETIONS_DEFAULT_MAX_TOKENS
            max_tokens = min(default, room) if room is not None else default
        elif ctx is not None and n_prompt + max_tokens > ctx:
            raise ApiError(400, f"this model's maximum context length is {ctx} tokens; you asked for "
                           f"{n_prompt + max_tokens} ({n_prompt} in the prompt, {max_tokens} to generate): "
                           f"lower '{name}' or shorten the prompt", param=name, code="context_length_exceeded")
        prefix = "chatcmpl" if endpoint == "chat.completions" else "cmpl"
        job = Job(request_id=f"{prefix}-{uuid.uuid4().hex[:24]}", endpoint=endpoint, prompt=prompt,
                  prompt_tokens=n_prompt, max_tokens=max_tokens,
                  temperature=1.0 if temperature is None else temperature, seed=seed or 0,
                  stop_at_eos=self.has_eos and not ignore_eos, stream=stream,
                  include_usage=bool(opts and opts.get("include_usage")))
        return job

    @staticmethod
    def _prompt(p: Any) -> str:
        if p is None:
            raise ApiError(400, "'prompt' is required", param="prompt", code="missing_required_parameter")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
            p = p[0]
        if isinstance(p, list):
            if p and all(isinstance(x, int) and not isinstance(x, bool) for x in p):
                raise ApiError(400, "token-id prompts are not supported: send the prompt as text", param="prompt",
                               code="invalid_type")
            raise ApiError(400, "send one prompt per request (a string)", param="prompt", code="invalid_type")
        if not isinstance(p, str):
            raise ApiError(400, f"'prompt' must be a string (got {type(p).__name__})", param="prompt",
                           code="invalid_type")
        return p


class Detokenizer:
    """Text of a growing token list, piece by piece, never splitting a UTF-8 character: each
    step decodes a short window (the last emitted tokens plus the new ones) and holds back text
    that ends in a replacement character (an incomplete byte sequence)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self.sent = ""

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        dec = self.tok.decode
        before = dec(self.ids[self._prefix:self._read], skip_special_tokens=True)
        now = dec(self.ids[self._prefix:], skip_special_tokens=True)
        if len(now) > len(before) and not now.endswith("\ufffd"):
            piece = now[len(before):]
            self._prefix, self._read = self._read, len(self.ids)
            self.sent += piece
            return piece
        return ""

    def finish(self) -> str:
        full = self.tok.decode(self.ids, skip_special_tokens=True)
        rest = full[len(self.sent):] if full.startswith(self.sent) else ""
        self.sent += rest
        return rest


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), allow_nan=False).encode() + b"\n\n"


def _clean(x: Any) -> Any:
    from greenprof.accounting import clean_json

    return clean_json(x)


def build_app(engine: "Engine", *, registry: Any = None, stopping: Callable[[], bool] = lambda: False,
              bench_toggle: bool = False, warn: Callable[[str], None] | None = None) -> Any:
    """The Starlette application over ``engine``."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    from greenprof.serve_engine import INTERRUPTED_CLIENT, INTERRUPTED_SERVER

    info = engine.info
    say = warn or (lambda msg: sys.stderr.write(f"greenprof serve: {msg}\n"))
    admission = Admission(info.name, engine.model.tokenizer, info.context_length, bool(info.eos_token_ids))
    created = int(time.time())

    def error(status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
              code: str | None = None) -> JSONResponse:
        return JSONResponse(ApiError(status, message, param=param, code=code, type_=type_).body(), status_code=status)

    def reject(e: ApiError) -> JSONResponse:
        if engine.metrics is not None:
            engine.metrics.requests.labels(model=info.name, status="rejected").inc()
        return JSONResponse(e.body(), status_code=e.status)

    endpoints = {"/v1/chat/completions": "chat.completions", "/v1/completions": "completions"}

    def guarded(fn):
        async def endpoint(request: Request):
            arrived_ns = time.time_ns()
            try:
                return await fn(request)
            except ApiError as e:
                which = endpoints.get(request.url.path)
                if engine.otel is not None and which is not None:  # a rejected request is a span too
                    try:
                        engine.otel.request_rejected(which, info, e.status, e.code, e.message, arrived_ns,
                                                     engine.otel.context_from(dict(request.headers)))
                    except Exception as err:
                        say(f"could not export a span: {type(err).__name__}: {err}")
                return reject(e)
            except Exception as e:  # a server fault: one line, never a traceback
                say(f"{request.method} {request.url.path} failed: {type(e).__name__}: {e}")
                return error(500, f"internal error: {type(e).__name__}: {e}", type_="server_error")
        return endpoint

    async def read_json(request: Request) -> Any:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES >> 20} MiB")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None
        except RecursionError:
            raise ApiError(400, "the request body is JSON nested too deeply", code="invalid_json") from None

    def usage(job: "Job", out: "Outcome") -> dict:
        u = {"prompt_tokens": job.prompt_tokens, "completion_tokens": len(out.token_ids),
             "total_tokens": job.prompt_tokens + len(out.token_ids)}
        if out.energy is not None:
            u.update(out.energy.usage_fields())
        return _clean(u)

    def energy_headers(out: "Outcome", job: "Job") -> dict[str, str]:
        h = {"X-Greenprof-Request-Id": job.request_id}
        e = out.energy
        if e is not None:
            for name, v in (("Energy-J", e.energy_j), ("CO2e-G", e.co2e_g), ("Cost-USD", e.cost_usd)):
                if v is not None and math.isfinite(v):
                    h[f"X-Greenprof-{name}"] = repr(float(v))
            h["X-Greenprof-Energy-Method"] = e.method
            h["X-Greenprof-Energy-Basis"] = e.basis
            h["X-Greenprof-Energy-Uncertain"] = "true" if e.uncertain else "false"
            h["X-Greenprof-Energy-Partial"] = "true" if e.partial else "false"
        return h

    def submit(job: "Job", request: Request):
        if engine.closed or stopping():
            raise ApiError(503, "the server is shutting down", type_="server_error", code="unavailable")
        if engine.otel is not None:  # a caller's trace (W3C traceparent) becomes the span's parent
            job.trace_context = engine.otel.context_from(dict(request.headers))
        return engine.submit(job)

    async def completion(request: Request, endpoint: str):
        job = admission.job(await read_json(request), endpoint)
        if job.stream:
            return stream(job, endpoint, request)
        fut = submit(job, request)
        answer = asyncio.wrap_future(fut)
        # uvicorn does not cancel a handler whose client hangs up: watch for it, so a request
        # nobody waits for is interrupted (and one still queued never starts)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait((answer, gone), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            answer.cancel()
            if stopping():  # the graceful timeout: no queued request may start in the place this one frees
                engine.interrupt_queued(INTERRUPTED_SERVER)
            job.cancel(INTERRUPTED_SERVER if stopping() else INTERRUPTED_CLIENT)
            if stopping():  # uvicorn's graceful timeout: answer rather than die with a traceback
                return error(503, f"the request was interrupted: {INTERRUPTED_SERVER}", type_="server_error",
                             code="unavailable")
            raise
        finally:
            gone.cancel()
        if not answer.done():  # the client left: stored interrupted by the worker (or unstarted)
            job.cancel(INTERRUPTED_CLIENT)
            answer.cancel()
            return error(503, f"the request was interrupted: {INTERRUPTED_CLIENT}", type_="server_error",
                         code="unavailable")
        out = answer.result()
        if out.status == "failed":
            return error(500, f"generation failed: {out.error}", type_="server_error")
        if out.status != "completed":
            return error(503, f"the request was interrupted: {out.error}", type_="server_error", code="unavailable")
        text = engine.model.tokenizer.decode(out.token_ids, skip_special_tokens=True)
        if endpoint == "chat.completions":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": out.finish_reason}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": out.finish_reason}
            obj = "text_completion"
        doc = {"id": job.request_id, "object": obj, "created": int(time.time()), "model": info.name,
               "system_fingerprint": None, "choices": [choice], "usage": usage(job, out)}
        return JSONResponse(doc, headers=energy_headers(out, job))

    async def _disconnected(request: Request) -> None:
        """Returns when the client has hung up (the body is already read: the next ASGI
        message is the disconnect)."""
        while True:
            message = await request.receive()
            if message.get("type") == "http.disconnect":
                return

    class _Stream(StreamingResponse):
        """Cancels its job when the response ends before the job did (client gone, server
        stopping), whatever interrupted the stream."""

        def __init__(self, content, job: "Job", fut_box: list) -> None:
            super().__init__(content, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Greenprof-Request-Id": job.request_id})
            self._job, self._box = job, fut_box

        async def __call__(self, scope, receive, send):
            started = []

            async def tracked(message):
                if message["type"] == "http.response.start":
                    started.append(True)
                await send(message)

            try:
                await super().__call__(scope, receive, tracked)
            except asyncio.CancelledError:
                if not stopping():
                    raise
                # uvicorn's graceful timeout: tell the client, end the response (no traceback);
                # queued requests first, so none starts in the place this one frees
                engine.interrupt_queued(INTERRUPTED_SERVER)
                self._cancel()
                await self._interrupted(send, bool(started))
            finally:
                self._cancel()

        def _cancel(self) -> None:
            fut = self._box[0] if self._box else None
            if fut is None or not fut.done():
                self._job.cancel(INTERRUPTED_SERVER if stopping() else INTERRUPTED_CLIENT)
                if fut is not None:
                    fut.cancel()

        @staticmethod
        async def _interrupted(send, started: bool) -> None:
            err = ApiError(503, f"the request was interrupted: {INTERRUPTED_SERVER}", type_="server_error",
                           code="unavailable").body()
            try:
                if not started:
                    body = json.dumps(err).encode()
                    await send({"type": "http.response.start", "status": 503,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body, "more_body": False})
                else:
                    await send({"type": "http.response.body", "body": _sse(err), "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            except Exception:  # the connection is already gone
                pass

    def stream(job: "Job", endpoint: str, request: Request):
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        def put(item: Any) -> None:  # from a worker thread; the loop may be gone at shutdown
            try:
                loop.call_soon_threadsafe(q.put_nowait, item)
            except RuntimeError:
                pass

        job.sink = lambda i, tok: put(tok)
        fut = submit(job, request)
        fut.add_done_callback(lambda f: put(None))
        box = [fut]
        chat = endpoint == "chat.completions"
        include_usage = job.include_usage
        now = int(time.time())
        base = {"id": job.request_id, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": now, "model": info.name, "system_fingerprint": None}

        def chunk(text: str | None, finish: str | None = None, role: bool = False) -> bytes:
            if chat:
                delta: dict = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            d = dict(base, choices=[choice])
            if include_usage:
                d["usage"] = None
            return _sse(d)

        async def body():
            detok = Detokenizer(engine.model.tokenizer)
            if chat:
                yield chunk(None, role=True)
            while True:
                tok = await q.get()
                if tok is None:
                    break
                piece = detok.add(tok)
                if piece:
                    yield chunk(piece)
            if fut.cancelled():
                return
            out = fut.result()
            if out.status != "completed":
                kind = "server_error"
                msg = f"generation failed: {out.error}" if out.status == "failed" else \
                    f"the request was interrupted: {out.error}"
                yield _sse({"error": {"message": msg, "type": kind, "param": None, "code": None}})
                return
            rest = detok.finish()
            if rest:
                yield chunk(rest)
            yield chunk(None, finish=out.finish_reason)
            if include_usage:
                yield _sse(dict(base, choices=[], usage=usage(job, out)))
            yield b"data: [DONE]\n\n"

        return _Stream(body(), job, box)

    @guarded
    async def chat_completions(request: Request):
        return await completion(request, "chat.completions")

    @guarded
    async def completions(request: Request):
        return await completion(request, "completions")

    def model_card() -> dict:
        return {"id": info.name, "object": "model", "created": created, "owned_by": "greenprof",
                "context_length": info.context_length, "precision": info.precision}

    @guarded
    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [model_card()]})

    @guarded
    async def model_one(request: Request):
        if request.path_params["model_id"] != info.name:
            raise ApiError(404, f"the model {request.path_params['model_id']!r} does not exist here: this server "
                           f"serves {info.name!r}", param="model", code="model_not_found")
        return JSONResponse(model_card())

    @guarded
    async def health(request: Request):
        return JSONResponse({"status": "stopping" if stopping() else "ok", "model": info.name,
                             "accounting": engine.accounting, "in_flight": engine.in_flight})

    @guarded
    async def metrics(request: Request):
        if registry is None:
            raise ApiError(404, "metrics are off on this server")
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        data = await run_in_threadpool(generate_latest, registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    @guarded
    async def bench_accounting(request: Request):
        if request.method == "POST":
            body = await read_json(request)
            if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
                raise ApiError(400, "send {\"enabled\": true|false}", param="enabled")
            if engine.in_flight:
                raise ApiError(409, "requests are in flight: switch accounting between rounds")
            await run_in_threadpool(engine.set_accounting, body["enabled"])
        return JSONResponse({"enabled": engine.accounting})

    async def http_error(request: Request, exc: Exception):
        status = getattr(exc, "status_code", 500)
        msg = {404: f"no route {request.method} {request.url.path}: see /v1/models, /v1/chat/completions, "
                    "/v1/completions, /health, /metrics",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(status, str(getattr(exc, "detail", exc)))
        return error(status, msg, code={404: "not_found", 405: "method_not_allowed"}.get(status))

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", model_one, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    if bench_toggle:
        routes.append(Route("/greenprof/bench/accounting", bench_accounting, methods=["GET", "POST"]))
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


__all__ = ["Admission", "ApiError", "Detokenizer", "build_app", "chat_prompt"]
