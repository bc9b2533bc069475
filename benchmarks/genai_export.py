"""onnxruntime-genai's side of the benchmarks: the export of a built-in shape by onnxruntime-genai's
model builder (built once into the greenprof model cache), its own runtime
(``onnxruntime_genai.Generator``) and a hand-written ``session.run`` loop over the same export.

    python benchmarks/genai_export.py --make-hf OUT --model tiny   # the random-weight HF model

``genai_build`` runs the two heavy steps in child processes (torch and the model builder are never
imported by the measuring process). Needs the ``bench`` extra (also in ``test``): onnxruntime-genai,
onnx-ir (imported by its model builder, not declared by it), transformers, torch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

GENAI_MARKER = "greenprof-bench-genai.json"


# -- the onnxruntime-genai export ----------------------------------------------------------------
def make_hf_folder(model: str, out: Path) -> None:
    """A random-weight transformers LlamaForCausalLM with ``model``'s shape, and a tokenizer.

    Runs in a child process (``--make-hf``) so torch is never imported by the measuring one."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from greenprof.models.shapes import get_shape
    from greenprof.models.tokenizer import EOS_TOKEN, EOS_TOKEN_ID, build_tokenizer

    s = get_shape(model)
    cfg = LlamaConfig(
        hidden_size=s.hidden, num_hidden_layers=s.layers, num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads, head_dim=s.head_dim, intermediate_size=s.intermediate,
        vocab_size=s.vocab, tie_word_embeddings=s.tied_embeddings, rms_norm_eps=s.rms_eps,
        rope_theta=s.rope_theta, max_position_embeddings=s.max_position,
        bos_token_id=EOS_TOKEN_ID, eos_token_id=EOS_TOKEN_ID, hidden_act="silu",
    )
    torch.manual_seed(0)
    with torch.no_grad():
        net = LlamaForCausalLM(cfg).to(torch.float32).eval()
    net.save_pretrained(str(out))
    tok = PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(s.vocab), eos_token=EOS_TOKEN,
                                  bos_token=EOS_TOKEN, pad_token=EOS_TOKEN)
    tok.save_pretrained(str(out))


def _genai_key(shape: Any, og_version: str) -> str:
    doc = json.dumps({"shape": shape.to_dict(), "og": og_version, "precision": "fp32", "ep": "cpu"},
                     sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:10]


def _genai_complete(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / GENAI_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for name, size in meta.get("files", {}).items():
        f = folder / name
        if not f.is_file() or f.stat().st_size != size:
            return None
    return meta if meta.get("files") else None


def genai_build(model: str, cache_dir: str | None, rebuild: bool) -> tuple[Path, dict[str, Any]]:
    """The onnxruntime-genai export of ``model`` (fp32, CPU), built once into the model cache."""
    from importlib.metadata import version

    from greenprof.models.builder import cache_root
    from greenprof.models.shapes import get_shape

    shape = get_shape(model)
    og_version = version("onnxruntime-genai")
    root = cache_root(cache_dir)
    final = root / f"bench-genai-{shape.name}-fp32-og{og_version}-{_genai_key(shape, og_version)}"
    if not rebuild:
        meta = _genai_complete(final)
        if meta is not None:
            return final, {**meta, "cached": True}

    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        hf, out, work = tmp / "hf", tmp / "out", tmp / "builder-cache"
        logfile = tmp.parent / f"{tmp.name}.log"
        t0 = time.perf_counter()
        _child([sys.executable, str(Path(__file__).resolve()), "--make-hf", str(hf), "--model", model],
               logfile, "creating the random-weight transformers model")
        t1 = time.perf_counter()
        _child([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out),
                "-p", "fp32", "-e", "cpu", "-c", str(work)], logfile, "onnxruntime-genai's model builder")
        t2 = time.perf_counter()
        logfile.unlink(missing_ok=True)
        files = {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}
        meta = {
            "model": shape.name, "onnxruntime_genai": og_version, "files": files,
            "hf_model_s": round(t1 - t0, 3), "builder_s": round(t2 - t1, 3), "build_s": round(t2 - t0, 3),
            "command": "python -m onnxruntime_genai.models.builder -i <hf> -o <out> -p fp32 -e cpu",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        # Written last: a folder without it (or with a file of another size) is rebuilt.
        (out / GENAI_MARKER).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(out, final)
        except OSError:
            if _genai_complete(final) is None:  # not a concurrent run that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final, {**meta, "cached": False}


def _child(cmd: list[str], logfile: Path, what: str) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(logfile, "ab") as fh:
        r = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if r.returncode != 0:
        tail = logfile.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"genai export: {what} failed (exit {r.returncode}); last output:\n{tail}\n"
                         f"(full log: {logfile})")


# -- their export through a hand-written onnxruntime loop (a detail) ------------------------------------------------
class GenaiLoop:
    """A minimal greedy ``session.run`` loop over an onnxruntime-genai export, bound by name.

    Not the peer the benchmark's headline compares with (that is :class:`GenaiRuntime`): this loop
    grows its cache by one position and copies it into ``present.*`` every step, which the
    onnxruntime-genai runtime does not do; it is kept as a detail."""

    def __init__(self, folder: Path, threads: int) -> None:
        import numpy as np
        import onnxruntime as ort

        cfg = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))
        dec = cfg["model"]["decoder"]
        self.path = folder / dec["filename"]
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), sess_options=so, providers=["CPUExecutionProvider"])
        self.session_options = {"intra_op_num_threads": threads, "graph_optimization_level": "ORT_ENABLE_ALL",
                                "session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}
        ins = {i.name: i for i in self.session.get_inputs()}
        outs = {o.name for o in self.session.get_outputs()}
        cin, cout = dec.get("inputs", {}), dec.get("outputs", {})
        self.ids_name = cin.get("input_ids", "input_ids")
        self.mask_name = cin.get("attention_mask", "attention_mask")
        self.pos_name = cin.get("position_ids", "position_ids")
        kt, vt = cin.get("past_key_names", "past_key_values.%d.key"), cin.get("past_value_names", "past_key_values.%d.value")
        pkt, pvt = cout.get("present_key_names", "present.%d.key"), cout.get("present_value_names", "present.%d.value")
        layers = int(dec["num_hidden_layers"])
        self.past = [n for i in range(layers) for n in (kt % i, vt % i)]
        self.present = [n for i in range(layers) for n in (pkt % i, pvt % i)]
        logits = cout.get("logits", "logits")
        missing = [n for n in (self.ids_name, *self.past) if n not in ins] + [n for n in (logits, *self.present) if n not in outs]
        unknown = [n for n in ins if n not in {self.ids_name, self.mask_name, self.pos_name, *self.past}]
        if missing or unknown:
            raise SystemExit(f"genai export: {self.path} has an unexpected signature (missing {missing}, "
                             f"unknown inputs {unknown})")
        self.outputs = [logits, *self.present]
        np_type = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
                   "tensor(int32)": np.int32}
        self.ids_dtype = np_type[ins[self.ids_name].type]
        self.has_mask = self.mask_name in ins
        self.mask_dtype = np_type[ins[self.mask_name].type] if self.has_mask else np.int64
        self.has_pos = self.pos_name in ins
        self.pos_dtype = np_type[ins[self.pos_name].type] if self.has_pos else np.int64
        kv_dtype = np_type[ins[self.past[0]].type]
        self.empty = np.zeros((1, int(dec["num_key_value_heads"]), 0, int(dec["head_size"])), dtype=kv_dtype)
        self.inputs = sorted(ins)

    def generate(self, prompt_ids: Any, new_tokens: int) -> tuple[float, list[float]]:
        """(prefill seconds, per-token decode seconds) for batch 1, greedy, fixed length."""
        import numpy as np

        run, outputs, past = self.session.run, self.outputs, self.past
        n = prompt_ids.shape[1]
        ones = np.ones(n + new_tokens, dtype=self.mask_dtype)
        positions = np.arange(n + new_tokens, dtype=self.pos_dtype)
        feeds: dict[str, Any] = {name: self.empty for name in past}
        feeds[self.ids_name] = prompt_ids.astype(self.ids_dtype)
        if self.has_mask:
            feeds[self.mask_name] = ones[:n].reshape(1, n)
        if self.has_pos:
            feeds[self.pos_name] = positions[:n].reshape(1, n)
        ids = np.empty((1, 1), dtype=self.ids_dtype)
        clock = time.perf_counter
        t0 = clock()
        outs = run(outputs, feeds)
        t_prev = clock()
        prefill = t_prev - t0
        token = int(np.argmax(outs[0][0, -1]))
        durations = []
        for i in range(new_tokens):
            for name, value in zip(past, outs[1:]):
                feeds[name] = value
            ids[0, 0] = token
            feeds[self.ids_name] = ids
            total = n + i + 1
            if self.has_mask:
                feeds[self.mask_name] = ones[:total].reshape(1, total)
            if self.has_pos:
                feeds[self.pos_name] = positions[total - 1:total].reshape(1, 1)
            outs = run(outputs, feeds)
            if i + 1 < new_tokens:  # like generate(): the last pass's logits are not sampled
                token = int(np.argmax(outs[0][0, -1]))
            now = clock()
            durations.append(now - t_prev)
            t_prev = now
        return prefill, durations


# -- their export through their own runtime (the peer) -----------------------------------------
class GenaiRuntime:
    """onnxruntime-genai's own runtime over its export: ``og.Model`` + ``og.Generator``, greedy,
    on the CPU provider, with the session options overlaid on the folder's genai_config.json
    (intra-op threads, spinning), the way a user of onnxruntime-genai would set them."""

    def __init__(self, folder: Path, threads: int, spinning: bool = False) -> None:
        import onnxruntime_genai as og

        self.og = og
        self.version = getattr(og, "__version__", None) or _dist_version("onnxruntime-genai")
        self.name = f"onnxruntime_genai.Generator {self.version}"
        flag = "1" if spinning else "0"
        self.session_options = {"intra_op_num_threads": threads, "session.intra_op.allow_spinning": flag,
                                "session.inter_op.allow_spinning": flag}
        cfg = og.Config(str(folder))
        cfg.clear_providers()  # the CPU execution provider
        cfg.overlay(json.dumps({"model": {"decoder": {"session_options": self.session_options}}}))
        self.model = og.Model(cfg)

    def generate(self, prompt_ids: Any, new_tokens: int) -> tuple[float, list[float]]:
        """(prefill seconds, per-token decode seconds) for batch 1, greedy, fixed length.

        ``append_tokens`` runs the prompt pass; the first ``generate_next_token`` only picks token
        1 from its logits; each later one runs one decode pass and picks the next token. So
        ``new_tokens`` + 1 calls run ``new_tokens`` decode passes, as ``generate()`` does (its last
        pass's logits are picked here, not there: one argmax). ``min_length`` = ``max_length``
        keeps an EOS from ending the run early."""
        import numpy as np

        og = self.og
        n = int(prompt_ids.shape[-1])
        total = n + new_tokens + 1
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        gen = og.Generator(self.model, params)
        ids = np.ascontiguousarray(prompt_ids.reshape(-1), dtype=np.int32)
        clock = time.perf_counter
        t0 = clock()
        gen.append_tokens(ids)
        gen.generate_next_token()
        t_prev = clock()
        prefill = t_prev - t0
        durations = []
        for _ in range(new_tokens):
            gen.generate_next_token()
            now = clock()
            durations.append(now - t_prev)
            t_prev = now
        got = len(gen.get_sequence(0))
        if got != total:
            raise SystemExit(f"genai export: onnxruntime_genai.Generator produced {got} tokens, expected {total}")
        return prefill, durations


def _dist_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="genai_export.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--make-hf", required=True, metavar="OUT",
                        help="write a random-weight transformers LlamaForCausalLM with the shape's config to OUT")
    parser.add_argument("--model", default="tiny", help="built-in shape (default tiny)")
    args = parser.parse_args(argv)
    make_hf_folder(args.model, Path(args.make_hf))
    return 0


if __name__ == "__main__":
    sys.exit(main())
