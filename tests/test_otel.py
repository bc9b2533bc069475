"""OpenTelemetry: `greenprof serve` in this process, with the SDK's in-memory span exporter and
metric reader (no network); the official openai client drives it over 127.0.0.1."""

from __future__ import annotations

import openai
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from powercap_fake import CounterWriter, build

from greenprof.errors import UsageError
from greenprof.otel import Otel, hw_type
from greenprof.serve import Server, ServeOptions

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def _metrics(reader):
    out = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = m
    return out


def test_each_request_is_a_genai_span_with_its_energy_and_node_energy_is_hw_energy(tmp_path, monkeypatch):
    pc = build(tmp_path / "pc", sockets=1, dram=False)
    monkeypatch.setenv("GREENPROF_POWERCAP_ROOT", str(pc.root))
    spans = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    otel = Otel(tp, MeterProvider(metric_readers=[reader]))
    with CounterWriter(pc.zone("intel-rapl:0"), 15.0):
        srv = Server(ServeOptions("tiny", port=0, db=str(tmp_path / "otel.db"), idle_run_s=0), otel=otel,
                     say=lambda msg: None).prepare().start()
        try:
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
            r = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "trace me"}], max_tokens=24, temperature=0,
                extra_body={"ignore_eos": True}, extra_headers={"traceparent": f"00-{TRACE_ID}-{PARENT}-01"})
            c = client.completions.create(model="tiny", prompt="and me", max_tokens=3, extra_body={"ignore_eos": True})
            data = _metrics(reader)
            with pytest.raises(openai.BadRequestError):  # refused: a span with an error status, no energy
                client.completions.create(model="tiny", prompt="x", max_tokens=0)
        finally:
            srv.stop()
    finished = spans.get_finished_spans()
    assert [s.name for s in finished] == ["chat tiny", "text_completion tiny", "text_completion tiny"]
    chat, comp, refused = finished
    ra = refused.attributes
    assert (ra["greenprof.status"], ra["error.type"], ra["http.response.status_code"]) == ("rejected",
                                                                                           "invalid_value", 400)
    assert refused.status.status_code.name == "ERROR" and "greenprof.energy_j" not in ra
    a = chat.attributes
    assert chat.kind is SpanKind.SERVER
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "greenprof"
    assert a["gen_ai.request.model"] == a["gen_ai.response.model"] == "tiny"
    assert a["gen_ai.response.id"] == r.id
    assert a["gen_ai.usage.input_tokens"] == r.usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == r.usage.completion_tokens == 24
    assert a["gen_ai.request.max_tokens"] == 24 and a["gen_ai.request.temperature"] == 0
    assert tuple(a["gen_ai.response.finish_reasons"]) == ("length",)
    assert a["greenprof.energy_j"] == r.usage.model_extra["energy_j"] > 0
    assert a["greenprof.co2e_g"] == r.usage.model_extra["co2e_g"]
    assert a["greenprof.energy_method"] == "measured" and a["greenprof.energy_basis"] == "attributed"
    assert a["greenprof.energy_uncertain"] is False and a["greenprof.energy_partial"] is False
    assert a["greenprof.status"] == "completed"
    # the caller's W3C trace is the parent
    assert format(chat.context.trace_id, "032x") == TRACE_ID
    assert format(chat.parent.span_id, "016x") == PARENT
    assert chat.end_time > chat.start_time
    assert comp.attributes["gen_ai.operation.name"] == "text_completion"
    assert comp.attributes["gen_ai.usage.output_tokens"] == c.usage.completion_tokens == 3
    assert comp.parent is None
    # node energy: hw.energy, a cumulative counter in joules per domain
    energy = data["hw.energy"]
    assert energy.unit == "J" and energy.data.is_monotonic
    points = {p.attributes["hw.id"]: p for p in energy.data.data_points}
    assert set(points) == {"cpu-package-0"}
    p = points["cpu-package-0"]
    assert p.attributes["hw.type"] == "cpu" and p.attributes["greenprof.energy_method"] == "measured"
    assert p.value > 0
    duration = data["gen_ai.server.request.duration"]
    assert sum(dp.count for dp in duration.data.data_points) == 2
    assert duration.unit == "s"


def test_hw_types_and_a_bad_endpoint():
    assert [hw_type(d) for d in ("cpu-package-0", "dram-0", "gpu-1", "psys", "cpu-estimate")] == \
        ["cpu", "memory", "gpu", "enclosure", "cpu"]
    with pytest.raises(UsageError, match="must be an http"):
        Otel.from_endpoint("collector:4318")
    o = Otel.from_endpoint("http://127.0.0.1:4318")  # builds the OTLP exporters; nothing is sent yet
    assert o.owned
    o.shutdown()


@pytest.mark.parametrize("bad", ["localhost:4318", "http://", "ftp://x", "http://[::1", "http://127.0.0.1:99999",
                                 "http://host:port"])
def test_endpoints_that_cannot_work_are_refused_at_the_start(bad):
    from greenprof.errors import UsageError

    with pytest.raises(UsageError, match="must be an http"):
        Otel.from_endpoint(bad)


def test_failed_exports_are_one_line_each_not_every_retry(capsys):
    import logging

    o = Otel.from_endpoint("http://127.0.0.1:4318")  # installs the one-line handler
    log = logging.getLogger("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    for _ in range(5):
        log.warning("Transient error %s encountered while exporting spans batch, retrying in %ss.", "refused", 1.1)
    log.error("Failed to export spans batch due to timeout, max retries or shutdown.")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("greenprof: OpenTelemetry export: ") for line in err), err
    assert o.shutdown(timeout_s=5.0)  # nothing pending: stopped in time
