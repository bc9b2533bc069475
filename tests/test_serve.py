"""`greenprof serve tiny` as a real subprocess on 127.0.0.1, driven by the official openai client.

The server runs on a fake powercap tree whose package counter moves at a known power (the
hardware boundary is the only thing simulated), so energies can be checked against it.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from powercap_fake import CounterWriter, build
from serve_proc import Proc, env_with, free_port, http, run_of, serve_runs, settled_serve_runs

POWER_W = 25.0
INTENSITY = 100.0
PRICE = 0.2
DOMAIN = "cpu-package-0"


@pytest.fixture(scope="module")
def tiny_built():
    from greenprof.models import builder

    builder.build("tiny", "fp32")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_built):
    tmp = tmp_path_factory.mktemp("serve")
    pc = build(tmp / "pc", sockets=1, dram=False)
    db = str(tmp / "serve.db")
    port = free_port()
    with CounterWriter(pc.zone("intel-rapl:0"), POWER_W):
        p = Proc(["serve", "tiny", "--port", str(port), "--db", db, "--intensity", str(INTENSITY),
                  "--price-kwh", str(PRICE), "--idle-run-s", "2"],
                 env_with(GREENPROF_POWERCAP_ROOT=str(pc.root)), tmp / "serve.err")
        base = f"http://127.0.0.1:{port}"
        try:
            p.wait_http(base + "/health")
            yield {"base": base, "db": db, "proc": p, "port": port}
        finally:
            code = p.terminate()
        assert code == 0, p.stderr()
        assert "Traceback" not in p.stderr()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server["base"] + "/v1", api_key="unused", max_retries=0, timeout=60)


def metrics(base: str) -> dict[tuple[str, tuple], float]:
    status, text, _ = http("GET", base + "/metrics")
    assert status == 200
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(m: dict, name: str, **labels) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def stored_energy(run) -> float:
    return math.fsum(d.attributed_energy_j for d in run.domains.values() if d.attributed_energy_j is not None)


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    status, doc, _ = http("GET", server["base"] + "/health")
    assert status == 200 and doc["status"] == "ok" and doc["accounting"] is True


def test_chat_completion_carries_its_energy_and_is_stored(server, client):
    raw = client.chat.completions.with_raw_response.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=12, extra_body={"ignore_eos": True})
    r = raw.parse()
    assert r.object == "chat.completion" and r.model == "tiny"
    assert isinstance(r.choices[0].message.content, str) and r.choices[0].finish_reason == "length"
    u = r.usage
    # the documented template: "user: hi\nassistant:", one token per byte on the built-in tokenizer
    assert u.prompt_tokens == len("user: hi\nassistant:".encode()) and u.completion_tokens == 12
    assert u.total_tokens == u.prompt_tokens + 12
    extra = u.model_extra
    assert extra["energy_method"] == "measured" and extra["energy_basis"] == "attributed"
    assert extra["energy_uncertain"] is False and extra["energy_partial"] is False
    e = extra["energy_j"]
    assert e > 0
    assert extra["co2e_g"] == pytest.approx(e / 3.6e6 * INTENSITY, rel=1e-9)
    assert extra["cost_usd"] == pytest.approx(e / 3.6e6 * PRICE, rel=1e-9)
    assert float(raw.headers["X-Greenprof-Energy-J"]) == e
    assert float(raw.headers["X-Greenprof-CO2e-G"]) == extra["co2e_g"]
    assert raw.headers["X-Greenprof-Energy-Method"] == "measured"
    assert raw.headers["X-Greenprof-Energy-Basis"] == "attributed"
    assert raw.headers["X-Greenprof-Energy-Uncertain"] == raw.headers["X-Greenprof-Energy-Partial"] == "false"
    run = run_of(server["db"], r.id)
    assert (run.kind, run.status, run.model_name) == ("serve", "completed", "tiny")
    assert (run.prompt_tokens, run.new_tokens) == (u.prompt_tokens, 12)
    # marked per token, stored per phase: the 12 tokens in decode segments (one per sampler
    # interval the generation spans) that say how many they hold
    labels = [s.label for s in run.segments if s.label != "setup"]
    assert labels[0] == "prefill" and labels[-1] == "end" and set(labels[1:-1]) == {"decode"}
    decode = [s for s in run.segments if s.label == "decode"]
    assert all(s.kind == "decode" for s in decode) and sum(s.tokens for s in decode) == 12
    prefill = run.segments[[s.label for s in run.segments].index("prefill")]
    assert (prefill.kind, prefill.tokens) == ("prefill", u.prompt_tokens)
    assert run.phases["decode"].tokens == 12
    assert stored_energy(run) == pytest.approx(e, rel=1e-9)
    serve = run.extra["serve"]
    # ended when the request ended (not when the batch of runs was written, up to 0.25 s later)
    assert (run.ended_at - run.started_at).total_seconds() == pytest.approx(run.duration_s, abs=0.05)
    assert serve["request_id"] == r.id and serve["endpoint"] == "chat.completions"
    assert 0 < serve["ttft_s"] < run.duration_s + serve["queue_s"] + 1
    assert serve["finish_reason"] == "length"


def test_a_request_whose_counter_did_not_move_is_flagged_uncertain_not_measured_zero(tmp_path, tiny_built,
                                                                                   monkeypatch):
    """A counter that does not update within a request (here: never) reads 0 J; the answer says
    that figure is uncertain, in usage and headers, and the stored run gives the reason."""
    from greenprof.serve import Server, ServeOptions

    pc = build(tmp_path / "pc", sockets=1, dram=False)  # no writer: the counter stands still
    monkeypatch.setenv("GREENPROF_POWERCAP_ROOT", str(pc.root))
    db = str(tmp_path / "still.db")
    srv = Server(ServeOptions("tiny", port=0, db=db, idle_run_s=0), say=lambda msg: None).prepare().start()
    try:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        raw = c.completions.with_raw_response.create(model="tiny", prompt="still", max_tokens=4,
                                                     extra_body={"ignore_eos": True})
        r = raw.parse()
    finally:
        srv.stop()
    extra = r.usage.model_extra
    assert extra["energy_method"] == "measured" and extra["energy_j"] == 0
    assert extra["energy_uncertain"] is True and extra["energy_partial"] is False
    assert raw.headers["X-Greenprof-Energy-Uncertain"] == "true"
    run = run_of(db, r.id)
    assert run.status == "completed"
    reason = run.domains[DOMAIN].uncertain_reason
    assert "its counter did not" in reason and "0 J" in reason  # short window or still counter: not measured


def test_streamed_chat_with_usage_matches_the_plain_answer(server, client):
    kw = dict(model="tiny", messages=[{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "Name a joule."}],
              max_tokens=20, seed=7, extra_body={"ignore_eos": True})
    plain = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content  # same seed, same tokens
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == 20
    assert last.usage.prompt_tokens == plain.usage.prompt_tokens
    assert last.usage.model_extra["energy_j"] > 0 and last.usage.model_extra["energy_method"] == "measured"
    assert all(c.usage is None for c in chunks[:-1])
    run = run_of(server["db"], last.id)
    assert run.status == "completed" and run.extra["serve"]["stream"] is True
    assert stored_energy(run) == pytest.approx(last.usage.model_extra["energy_j"], rel=1e-9)


def test_legacy_completion_plain_and_streamed(server, client):
    r = client.completions.create(model="tiny", prompt="Explain RAPL", max_tokens=5, extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(b"Explain RAPL"), 5)
    assert r.usage.model_extra["energy_j"] > 0
    assert run_of(server["db"], r.id).status == "completed"
    chunks = list(client.completions.create(model="tiny", prompt="Explain RAPL", max_tokens=5, stream=True,
                                            extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_eight_concurrent_clients_split_the_energy(server, client):
    before = metrics(server["base"])

    def one(k):
        return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"client {k}"}],
                                              max_tokens=300, seed=k, extra_body={"ignore_eos": True})

    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    wall = time.monotonic() - t0
    # a scrape within min_roll_s (0.2 s) of the node window's last renewal (the idle-period
    # thread renews it every 2 s here) reads the totals of that renewal: wait, so this one counts
    # everything up to now and the process's share below covers all eight requests
    time.sleep(0.5)
    after = metrics(server["base"])
    energies = [a.usage.model_extra["energy_j"] for a in answers]
    assert all(e > 0 for e in energies)
    assert all(a.usage.completion_tokens == 300 for a in answers)
    # each joule is charged once: together the requests never get more than the counter saw
    assert math.fsum(energies) <= POWER_W * wall * 1.01
    # ... nor more than the server process's own share over the same time
    proc = (metric(after, "greenprof_process_energy_joules_total", domain=DOMAIN, method="measured")
            - metric(before, "greenprof_process_energy_joules_total", domain=DOMAIN, method="measured"))
    assert math.fsum(energies) <= proc * 1.03
    runs = [run_of(server["db"], a.id) for a in answers]
    assert all(r.status == "completed" for r in runs)
    assert max(r.concurrent_windows or 0 for r in runs) >= 1  # they did overlap
    served = (metric(after, "greenprof_model_tokens_total", model="tiny", precision="fp32", type="output")
              - metric(before, "greenprof_model_tokens_total", model="tiny", precision="fp32", type="output"))
    assert served == 8 * 300
    charged = sum(metric(after, "greenprof_model_energy_joules_total", model="tiny", precision="fp32", phase=p)
                  - metric(before, "greenprof_model_energy_joules_total", model="tiny", precision="fp32", phase=p)
                  for p in ("setup", "prefill", "decode", "teardown"))
    assert charged == pytest.approx(math.fsum(energies), rel=1e-6)


def test_a_client_that_disconnects_mid_stream_is_stored_interrupted(server, client):
    before = metrics(server["base"])
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "go on"}],
                                            max_tokens=2000, stream=True, extra_body={"ignore_eos": True})
    rid = None
    for i, chunk in enumerate(stream):
        rid = chunk.id
        if i == 2:
            break
    stream.close()
    run = run_of(server["db"], rid)
    assert run.status == "interrupted"
    assert "disconnected" in (run.error or "")
    assert 0 < run.new_tokens < 2000
    assert stored_energy(run) > 0  # what it used until the client left is kept
    # the server goes on answering
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "still there?"}],
                                       max_tokens=3)
    assert r.usage.completion_tokens >= 1
    after = metrics(server["base"])
    assert (metric(after, "greenprof_requests_total", model="tiny", status="interrupted")
            - metric(before, "greenprof_requests_total", model="tiny", status="interrupted")) == 1


BAD = [
    # (what, body, status, param)
    ("unknown model", {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
    ("max_tokens 0", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400,
     "max_tokens"),
    ("max_tokens negative", {"model": "tiny", "prompt": "x", "max_tokens": -3}, 400, "max_tokens"),
    ("max_tokens above the limit", {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                                    "max_tokens": 100_000}, 400, "max_tokens"),
    ("missing messages", {"model": "tiny"}, 400, "messages"),
    ("empty messages", {"model": "tiny", "messages": []}, 400, "messages"),
    ("bad role", {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
    ("prompt longer than the context", {"model": "tiny", "prompt": "a" * 3000}, 400, "prompt"),
    ("prompt + max_tokens over the context", {"model": "tiny", "prompt": "a" * 2000, "max_tokens": 100}, 400,
     "max_tokens"),
    ("stream_options without stream", {"model": "tiny", "prompt": "x", "stream_options": {"include_usage": True}},
     400, "stream_options"),
    ("n=2", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n"),
    ("token-id prompt", {"model": "tiny", "prompt": [1, 2, 3]}, 400, "prompt"),
    ("negative seed", {"model": "tiny", "prompt": "x", "seed": -1}, 400, "seed"),
    ("temperature above 2", {"model": "tiny", "prompt": "x", "temperature": 5}, 400, "temperature"),
    ("not an object", [1, 2], 400, None),
    ("a lone surrogate in the prompt", {"model": "tiny", "prompt": "hi \ud800"}, 400, "prompt"),
    ("a lone surrogate in a message", {"model": "tiny", "messages": [{"role": "user", "content": "\udfff"}]}, 400,
     "messages"),
    ("top_logprobs", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400,
     "top_logprobs"),
]


def test_bad_requests_get_openai_errors_and_store_nothing(server, client):
    base = server["base"]
    n_before = len(settled_serve_runs(server["db"]))  # the earlier tests' runs are all written
    m0 = metrics(base)
    for what, body, status, param in BAD:
        path = "/v1/chat/completions" if isinstance(body, dict) and ("messages" in body or "prompt" not in body) \
            else "/v1/completions"
        code, doc, _ = http("POST", base + path, json.dumps(body))
        assert code == status, what
        assert set(doc["error"]) == {"message", "type", "param", "code"}, what
        assert doc["error"]["type"] == "invalid_request_error" and doc["error"]["param"] == param, what
        assert doc["error"]["message"], what
    code, doc, _ = http("POST", base + "/v1/chat/completions", '{"model": "tiny", "messages": [')
    assert code == 400 and doc["error"]["code"] == "invalid_json"
    code, doc, _ = http("POST", base + "/v1/completions", "[" * 100_000 + "]" * 100_000)  # deeper than Python's stack
    assert code == 400 and doc["error"]["code"] == "invalid_json"
    code, doc, _ = http("GET", base + "/v1/chat/completions")
    assert code == 405 and "error" in doc
    code, doc, _ = http("GET", base + "/v2/nothing")
    assert code == 404 and "error" in doc
    # the official client sees them as its typed errors
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="a" * 3000)
    assert e.value.code == "context_length_exceeded"
    m1 = metrics(base)
    assert (metric(m1, "greenprof_requests_total", model="tiny", status="rejected")
            - metric(m0, "greenprof_requests_total", model="tiny", status="rejected")) == len(BAD) + 4  # + 2 bad JSON, 2 via the client
    assert metric(m1, "greenprof_requests_total", model="tiny", status="completed") == \
        metric(m0, "greenprof_requests_total", model="tiny", status="completed")
    # nothing was stored, the server kept serving, and said nothing on stderr
    assert len(settled_serve_runs(server["db"])) == n_before
    assert client.completions.create(model="tiny", prompt="ok", max_tokens=2).usage.completion_tokens >= 1
    assert "Traceback" not in server["proc"].stderr()


def test_a_prompt_far_over_the_context_is_refused_by_its_prefix(server):
    """A prompt of a few MB is not tokenized whole (seconds with the interpreter held, every
    other client waiting): its first 32 characters per token of context settle it."""
    body = json.dumps({"model": "tiny", "prompt": "word " * 600_000})  # 3 MB
    code, doc, _ = http("POST", server["base"] + "/v1/completions", body, timeout=120)
    assert code == 400 and doc["error"]["code"] == "context_length_exceeded"
    assert "first 65536 characters alone are 65536" in doc["error"]["message"]  # 2048 tokens x 32


def test_metrics_count_tokens_energy_and_idle(server, client):
    m0 = metrics(server["base"])
    r = client.completions.create(model="tiny", prompt="count me", max_tokens=7, extra_body={"ignore_eos": True})
    m1 = metrics(server["base"])

    def d(name, **labels):
        return metric(m1, name, **labels) - metric(m0, name, **labels)

    assert d("greenprof_model_tokens_total", model="tiny", precision="fp32", type="output") == 7
    assert d("greenprof_model_tokens_total", model="tiny", precision="fp32", type="input") == r.usage.prompt_tokens
    assert d("greenprof_requests_total", model="tiny", status="completed") == 1
    assert d("greenprof_request_energy_joules_count", model="tiny", precision="fp32") == 1
    assert d("greenprof_request_energy_joules_sum", model="tiny", precision="fp32") == \
        pytest.approx(r.usage.model_extra["energy_j"], rel=1e-9)
    gross = metric(m1, "greenprof_energy_joules_total", domain=DOMAIN, method="measured")
    assert gross > 0 and metric(m1, "greenprof_power_watts", domain=DOMAIN) > 0
    idle = metric(m1, "greenprof_idle_energy_joules_total")
    assert 0 <= idle <= metric(m1, "greenprof_process_energy_joules_total", domain=DOMAIN, method="measured")


def test_idle_energy_is_stored_as_runs_at_the_counter_power(server):
    deadline = time.monotonic() + 20
    idle = []
    while time.monotonic() < deadline:
        idle = [r for r in serve_runs(server["db"], idle=True) if r.status == "completed" and (r.duration_s or 0) >= 1]
        if idle:
            break
        time.sleep(0.5)
    assert idle, "no idle period of 1 s or more was stored"
    run = max(idle, key=lambda r: r.duration_s)  # the longest: the fewest span boundaries per second
    # an idle period is energy between requests: no phase, token or per-request figure
    from greenprof.accounting import Costing, run_summary
    from greenprof.config import load_settings

    s = run_summary(run, Costing(load_settings({})))
    assert s["energy_j"] == pytest.approx(stored_energy(run), rel=1e-9) and s["energy_j"] > 0
    assert s["phase_energy_j"] == {} and s["decode_energy_j"] is None and s["j_per_token"] is None
    assert s["j_per_request"] is None and s["co2e_g_per_request"] is None and s["usd_per_request"] is None
    serve = run.extra["serve"]
    assert serve["idle"] is True and serve["served_model"] == "tiny"
    assert run.duration_s == pytest.approx(serve["idle_s"])
    dom = run.domains[DOMAIN]
    # what the counter saw over the idle spans: the known power x their length
    assert dom.energy_j / run.duration_s == pytest.approx(POWER_W, rel=0.05)
    assert 0 <= dom.attributed_energy_j <= dom.energy_j * (1 + 1e-9)


def terminate_when_admitted(p: Proc, base: str, client, n: int, started: threading.Event | None = None) -> None:
    """Run ``client(k)`` for k < n in threads; once the server has admitted all n (and ``started``
    is set, when given), SIGTERM it and wait for the clients."""
    threads = [threading.Thread(target=client, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    if started is not None:
        assert started.wait(30)
    deadline = time.monotonic() + 30
    while http("GET", base + "/health")[1]["in_flight"] < n and time.monotonic() < deadline:
        time.sleep(0.02)
    p.terminate()
    for t in threads:
        t.join(30)


def test_sigterm_interrupts_what_is_in_flight_and_exits_0(tmp_path, tiny_built):
    """One worker, four long streams: on SIGTERM the one generating is interrupted (or
    finishes), the queued ones are stored interrupted, and the process exits 0."""
    db = str(tmp_path / "term.db")
    port = free_port()
    p = Proc(["serve", "tiny", "--port", str(port), "--db", db, "--max-batch", "1", "--graceful-timeout", "0.5",
              "--idle-run-s", "0"], env_with(), tmp_path / "term.err")
    base = f"http://127.0.0.1:{port}"
    try:
        p.wait_http(base + "/health")
        started = threading.Event()
        results = []

        def stream(k):
            body = json.dumps({"model": "tiny", "prompt": f"long {k}", "max_tokens": 2000, "stream": True,
                               "ignore_eos": True}).encode()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              b"Content-Length: %d\r\n\r\n" % len(body) + body)
                    got = b""
                    while True:
                        data = s.recv(65536)
                        if not data:
                            break
                        got += data
                        if b'"text"' in got:
                            started.set()
                results.append(got)
            except OSError as e:
                results.append(repr(e).encode())

        # all four admitted (one generating, three queued), then SIGTERM
        terminate_when_admitted(p, base, stream, 4, started)
    finally:
        code = p.terminate()
    err = p.stderr()
    assert code == 0, err
    assert "Traceback" not in err
    runs = serve_runs(db)
    assert len(runs) == 4
    statuses = sorted(r.status for r in runs)
    assert set(statuses) <= {"completed", "interrupted"} and "interrupted" in statuses
    for r in runs:
        if r.status == "interrupted":
            assert "stopping" in r.error


def test_sigterm_never_starts_a_queued_request_and_says_the_server_stopped(tmp_path, tiny_built):
    """One worker, six long requests (plain and streamed, alternating): at the graceful timeout
    the queued ones are stored interrupted with no energy and "the server was stopping" as the
    reason, the plain ones as well as the streamed ones; none starts in the place the running
    one frees."""
    db = str(tmp_path / "term.db")
    port = free_port()
    p = Proc(["serve", "tiny", "--port", str(port), "--db", db, "--max-batch", "1", "--graceful-timeout", "0.3",
              "--idle-run-s", "0"], env_with(), tmp_path / "term.err")
    base = f"http://127.0.0.1:{port}"
    answers = []
    try:
        p.wait_http(base + "/health")

        def send(k):
            body = {"model": "tiny", "prompt": f"long {k}", "max_tokens": 2000, "ignore_eos": True,
                    "stream": k % 2 == 1}
            answers.append(http("POST", base + "/v1/completions", json.dumps(body), timeout=60)[0])

        terminate_when_admitted(p, base, send, 6)
    finally:
        code = p.terminate()
    assert code == 0 and "Traceback" not in p.stderr(), p.stderr()
    from greenprof.accounting import record_basis

    runs = serve_runs(db)
    assert len(runs) == 6
    unstarted = [r for r in runs if r.status == "interrupted" and not r.domains]
    assert len(unstarted) >= 4  # one ran (to the end or interrupted); no queued one started later
    for r in runs:
        if r.status == "interrupted":
            assert "the server was stopping" in r.error, (r.extra["serve"]["stream"], r.error)
            if not r.domains:
                assert r.new_tokens == 0 and "before the request started" in r.error
                assert r.extra["serve"]["queue_s"] > 0  # it waited in the queue until then
                assert record_basis(r) == "none"  # no energy, so on no basis (was "gross")


def test_a_model_without_a_tokenizer_is_refused(tmp_path, tiny_built):
    import shutil

    from greenprof.models import builder

    folder = tmp_path / "no-tok"
    shutil.copytree(builder.build("tiny", "fp32"), folder)
    (folder / "tokenizer.json").unlink()
    port = free_port()
    p = Proc(["serve", str(folder), "--port", str(port), "--db", str(tmp_path / "x.db")], env_with(),
             tmp_path / "err")
    code = p.proc.wait(120)
    p.terminate()
    err = p.stderr()
    assert code == 2
    assert "tokenizer.json" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_busy_port_is_one_line_and_exit_1(server, tmp_path):
    p = Proc(["serve", "tiny", "--port", str(server["port"]), "--db", str(tmp_path / "y.db")], env_with(),
             tmp_path / "err")
    code = p.proc.wait(120)
    p.terminate()
    err = p.stderr()
    assert code == 1 and "pick another --port" in err and "Traceback" not in err


def test_store_writer_batches_and_one_bad_run_loses_only_itself(tmp_path):
    """The serve writer stores queued runs in one transaction; when a batch fails, each run is
    tried alone, so only the bad one is lost, and that is said (once per kind, and counted)."""
    from greenprof.serve_engine import StoreWriter
    from greenprof.store import open_store

    warned: list[str] = []
    writer = StoreWriter(open_store(tmp_path / "w.db"), warned.append)
    good = dict(kind="serve", model_name="tiny", prompt_tokens=3, new_tokens=0)
    writer.record(good, None, "failed", "first")
    writer.record({**good, "no_such_column": 1}, None, "completed", None)
    writer.record(good, None, "interrupted", "third")
    writer.close()
    with open_store(tmp_path / "w.db", readonly=True) as store:
        runs = store.list_runs(limit=None)
    assert sorted(r.error for r in runs) == ["first", "third"]
    assert writer.lost == 1
    assert len([w for w in warned if "could not store a run (UsageError" in w]) == 1
    assert any("1 run(s) could not be stored" in w for w in warned)


def test_a_plain_request_whose_client_hangs_up_is_interrupted_not_generated_in_full(tmp_path, tiny_built):
    """uvicorn does not cancel a non-streaming handler when its client goes: both requests (one
    generating, one queued behind it) used to run to 2000 tokens and be stored completed."""
    db = str(tmp_path / "gone.db")
    port = free_port()
    p = Proc(["serve", "tiny", "--port", str(port), "--db", db, "--max-batch", "1", "--idle-run-s", "0"],
             env_with(), tmp_path / "gone.err")
    base = f"http://127.0.0.1:{port}"

    def send(prompt):
        body = json.dumps({"model": "tiny", "prompt": prompt, "max_tokens": 2000, "ignore_eos": True}).encode()
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        return s

    try:
        p.wait_http(base + "/health")
        a = send("A")
        time.sleep(0.05)
        b = send("B")
        time.sleep(0.1)
        a.close()
        b.close()
        end = time.monotonic() + 30
        while http("GET", base + "/health")[1]["in_flight"] and time.monotonic() < end:
            time.sleep(0.05)
        runs = settled_serve_runs(db)
        after = metrics(base)
    finally:
        code = p.terminate()
    assert code == 0 and "Traceback" not in p.stderr(), p.stderr()
    assert len(runs) == 2 and all(r.status == "interrupted" for r in runs), [(r.status, r.error) for r in runs]
    assert all(r.new_tokens < 2000 for r in runs)
    assert any("before the request started" in (r.error or "") for r in runs)  # the queued one never ran
    assert metric(after, "greenprof_requests_total", model="tiny", status="interrupted") == 2
    assert metric(after, "greenprof_requests_total", model="tiny", status="completed") == 0


def test_a_second_sigterm_after_stopped_still_exits_0(tmp_path, tiny_built):
    """Everything is written when "stopped" is printed, but the interpreter lives ~0.5-1 s more:
    a supervisor's second SIGTERM then made the exit "killed by signal" (-15)."""
    import signal

    port = free_port()
    p = Proc(["serve", "tiny", "--port", str(port), "--db", str(tmp_path / "s.db"), "--idle-run-s", "0"],
             env_with(), tmp_path / "s.err")
    try:
        p.wait_http(f"http://127.0.0.1:{port}/health")
        p.proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + 60
        while "stopped" not in p.stderr() and time.monotonic() < end:
            time.sleep(0.005)
        if p.proc.poll() is None:
            p.proc.send_signal(signal.SIGTERM)
        code = p.proc.wait(60)
    finally:
        p.terminate()
    assert code == 0, p.stderr()


def test_collectors_that_count_none_of_the_models_device_are_noted_at_start(tmp_path, tiny_built):
    trace = tmp_path / "trace.csv"
    trace.write_text("t_s,domain,power_w\n0,gpu-0,20\n100,gpu-0,30\n")
    port = free_port()
    p = Proc(["serve", "tiny", "--port", str(port), "--db", str(tmp_path / "g.db"), "--collectors", "replay:gpu-0",
              "--idle-run-s", "0"], env_with(GREENPROF_REPLAY=str(trace)), tmp_path / "note.err")
    try:
        p.wait_http(f"http://127.0.0.1:{port}/health")
    finally:
        code = p.terminate()
    assert code == 0, p.stderr()
    assert ("note: the model runs on cpu but --collectors replay:gpu-0 counts no energy of the CPU"
            in p.stderr()), p.stderr()


def test_a_client_that_hangs_up_mid_stream_leaves_no_noise_on_stderr(tmp_path, tiny_built):
    """asyncio printed "socket.send() raised exception." for the writes after a streaming client
    hung up (twice per request here): nothing to act on, the request is stored interrupted."""
    db = str(tmp_path / "g.db")
    port = free_port()
    p = Proc(["serve", "tiny", "--port", str(port), "--db", db, "--idle-run-s", "0"], env_with(),
             tmp_path / "noise.err")
    try:
        p.wait_http(f"http://127.0.0.1:{port}/health")
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", port))
            body = json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 2000, "stream": True,
                               "ignore_eos": True}).encode()
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
            assert s.recv(2000).startswith(b"HTTP/1.1 200")
            s.close()
            time.sleep(1.0)
    finally:
        code = p.terminate()
    assert code == 0, p.stderr()
    runs = serve_runs(db)
    assert [r.status for r in runs] == ["interrupted", "interrupted"]
    assert "socket.send()" not in p.stderr() and "Traceback" not in p.stderr(), p.stderr()


def test_only_asyncios_lost_connection_write_message_is_dropped():
    import logging

    from greenprof.serve import _quiet_lost_connections

    got: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            got.append(record.getMessage())

    log = logging.getLogger("asyncio")
    h = Keep()
    log.addHandler(h)
    try:
        _quiet_lost_connections()
        _quiet_lost_connections()  # once only
        log.warning("socket.send() raised exception.")
        log.error("Task exception was never retrieved")
    finally:
        log.removeHandler(h)
    assert got == ["Task exception was never retrieved"]
    assert sum(type(f).__name__ == "_DropLostConnectionWrites" for f in log.filters) == 1
