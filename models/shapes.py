"""Architecture shapes of real decoder LMs, for the built-in random-weight model family.

Energy per token depends on the shape (how many multiply-adds, how many bytes of weights and KV
cache move per token) and on the precision, not on the weight values. So the built-in family
copies the shapes of published models and fills them with seeded random weights
(:mod:`greenprof.models.builder`).

Two block architectures (``ModelShape.architecture``):

* ``"llama"`` (every shape but Falcon): RMSNorm, rotary position embedding (non-interleaved,
  ``rotate_half``), grouped-query attention without biases, SiLU-gated MLP (gate/up/down), one
  sub-layer after the other, and an LM head that is either tied to the token embedding or separate.
* ``"falcon"`` (Falcon's "new decoder architecture", as in Falcon-40B): the same rotary
  grouped-query attention (no biases), but LayerNorm with a bias, attention and a plain GELU MLP
  (``dense_h_to_4h`` -> GELU -> ``dense_4h_to_h``, no gate) computed *in parallel* from two
  LayerNorms of the same input (``ln_attn``, ``ln_mlp``) and added to the residual together,
  a final LayerNorm ``ln_f``, and the LM head tied to the embedding.

This module is import-cheap: no numpy, no onnx.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from greenprof.errors import UsageError

__all__ = ["ARCHITECTURES", "ModelShape", "SHAPES", "get_shape", "known_names", "param_count"]

ARCHITECTURES = ("llama", "falcon")


@dataclass(frozen=True)
class ModelShape:
    """The hyper-parameters of one decoder (names follow HF ``config.json``; see the module docs for
    the two ``architecture`` values)."""

    name: str  # canonical greenprof name, e.g. "smollm-135m"
    hidden: int  # hidden_size
    layers: int  # num_hidden_layers
    heads: int  # num_attention_heads
    kv_heads: int  # num_key_value_heads
    head_dim: int  # head_dim (hidden // heads unless the config says otherwise)
    intermediate: int  # intermediate_size of the gated MLP (Falcon: ffn_hidden_size)
    vocab: int  # vocab_size
    tied_embeddings: bool  # tie_word_embeddings
    rms_eps: float = 1e-5  # rms_norm_eps (Falcon: layer_norm_epsilon)
    rope_theta: float = 10000.0  # rope_theta
    max_position: int = 2048  # max_position_embeddings
    hf_id: str = ""  # where the shape comes from (provenance only; nothing is downloaded)
    architecture: str = "llama"  # "llama" | "falcon" (see the module docs)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise UsageError(f"shape {self.name!r}: architecture must be one of {', '.join(ARCHITECTURES)} "
                             f"(got {self.architecture!r})")
        if self.heads % self.kv_heads:
            raise UsageError(
                f"shape {self.name!r}: heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})"
            )
        if self.head_dim % 2:
            raise UsageError(f"shape {self.name!r}: head_dim ({self.head_dim}) must be even for rotary embeddings")
        for field in ("hidden", "layers", "heads", "kv_heads", "head_dim", "intermediate", "vocab", "max_position"):
            if getattr(self, field) <= 0:
                raise UsageError(f"shape {self.name!r}: {field} must be positive")
        if self.architecture == "falcon" and self.heads * self.head_dim != self.hidden:
            raise UsageError(f"shape {self.name!r}: a Falcon block has head_dim = hidden / heads "
                             f"({self.hidden} / {self.heads}), not {self.head_dim}")

    def to_dict(self) -> dict:
        """The fields as a dict. ``architecture`` is left out when it is ``"llama"``, so the
        dict of a Llama shape is the one builds stored before the field existed (a build is
        matched against it: adding the field must not make every cached model look stale)."""
        d = asdict(self)
        if d["architecture"] == "llama":
            del d["architecture"]
        return d

    @classmethod
    def from_dict(cls, data: dict) -> ModelShape:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def param_count(shape: ModelShape) -> int:
    """Number of parameters, counted the way ``sum(p.numel() for p in model.parameters())`` does
    (a tied LM head is the embedding: counted once).

    Llama: embedding ``vocab x hidden``; per layer q/k/v/o projections, gate/up/down projections
    and two RMSNorm weights; a final RMSNorm; a separate LM head unless the embeddings are tied.
    Falcon: the same attention projections (fused ``query_key_value`` + ``dense``), an ungated
    MLP (``dense_h_to_4h``, ``dense_4h_to_h``), two LayerNorms (weight and bias) per layer, a
    final LayerNorm, no biases elsewhere.
    """
    h, d = shape.hidden, shape.head_dim
    attn = h * (shape.heads * d) + 2 * h * (shape.kv_heads * d) + (shape.heads * d) * h
    if shape.architecture == "falcon":
        norm = 2 * h  # LayerNorm: weight and bias
        per_layer = attn + 2 * h * shape.intermediate + 2 * norm
    else:
        norm = h  # RMSNorm: weight only
        per_layer = attn + 3 * h * shape.intermediate + 2 * norm
    embed = shape.vocab * h
    lm_head = 0 if shape.tied_embeddings else shape.vocab * h
    return embed + shape.layers * per_layer + norm + lm_head


# Values copied from each model's public config.json on the Hugging Face Hub (the hf_id field).
# SmolLM: HuggingFaceTB/SmolLM-{135M,360M,1.7B}/config.json (LlamaForCausalLM, tied, theta 1e4,
#   max_position_embeddings 2048).
# Phi-3-mini: microsoft/Phi-3-mini-4k-instruct/config.json (Phi3ForCausalLM: Llama-like with
#   fused qkv/gate_up projections, which does not change the shape; untied; vocab 32064).
# Llama-2-7B: meta-llama/Llama-2-7b-hf/config.json (rms_norm_eps 1e-5, untied, vocab 32000).
# Mistral-NeMo-12B: mistralai/Mistral-Nemo-Base-2407/config.json (head_dim 128 although
#   hidden/heads = 160; 8 kv heads; rope_theta 1e6; max_position_embeddings 1024000; untied).
# Falcon-40B: tiiuae/falcon-40b/config.json (FalconForCausalLM, new_decoder_architecture true,
#   parallel_attn true, bias false, alibi false, hidden 8192, 60 layers, 128 heads, num_kv_heads 8,
#   so head_dim 64; ffn_hidden_size unset = 4 x hidden = 32768, activation "gelu" (exact, erf),
#   layer_norm_epsilon 1e-5, vocab 65024, tie_word_embeddings unset = true, rope_theta 1e4,
#   max_position_embeddings 2048). 41,303,293,952 parameters: this module's count, and what
#   transformers' FalconForCausalLM(config).num_parameters() gives for that config.
SHAPES: dict[str, ModelShape] = {
    s.name: s
    for s in (
        # Test shape: tiny and fast, but with every feature (GQA with 2 query heads per kv head,
        # tied embeddings, blocks of 32 along every input dimension).
        ModelShape("tiny", hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=128,
                   vocab=512, tied_embeddings=True, max_position=2048, hf_id=""),
        ModelShape("smollm-135m", hidden=576, layers=30, heads=9, kv_heads=3, head_dim=64,
                   intermediate=1536, vocab=49152, tied_embeddings=True, max_position=2048,
                   hf_id="HuggingFaceTB/SmolLM-135M"),
        ModelShape("smollm-360m", hidden=960, layers=32, heads=15, kv_heads=5, head_dim=64,
                   intermediate=2560, vocab=49152, tied_embeddings=True, max_position=2048,
                   hf_id="HuggingFaceTB/SmolLM-360M"),
        ModelShape("smollm-1.7b", hidden=2048, layers=24, heads=32, kv_heads=32, head_dim=64,
                   intermediate=8192, vocab=49152, tied_embeddings=True, max_position=2048,
                   hf_id="HuggingFaceTB/SmolLM-1.7B"),
        ModelShape("phi-3-mini", hidden=3072, layers=32, heads=32, kv_heads=32, head_dim=96,
                   intermediate=8192, vocab=32064, tied_embeddings=False, max_position=4096,
                   hf_id="microsoft/Phi-3-mini-4k-instruct"),
        ModelShape("llama-2-7b", hidden=4096, layers=32, heads=32, kv_heads=32, head_dim=128,
                   intermediate=11008, vocab=32000, tied_embeddings=False, max_position=4096,
                   hf_id="meta-llama/Llama-2-7b-hf"),
        ModelShape("mistral-nemo-12b", hidden=5120, layers=40, heads=32, kv_heads=8, head_dim=128,
                   intermediate=14336, vocab=131072, tied_embeddings=False, rope_theta=1_000_000.0,
                   max_position=1_024_000, hf_id="mistralai/Mistral-Nemo-Base-2407"),
        ModelShape("falcon-40b", hidden=8192, layers=60, heads=128, kv_heads=8, head_dim=64,
                   intermediate=32768, vocab=65024, tied_embeddings=True, max_position=2048,
                   hf_id="tiiuae/falcon-40b", architecture="falcon"),
    )
}


def known_names() -> list[str]:
    """Canonical names of the built-in shapes, smallest first."""
    return list(SHAPES)


def get_shape(name: str) -> ModelShape:
    """The shape registered under ``name`` (case-insensitive); UsageError listing the known names otherwise."""
    shape = SHAPES.get(name.strip().lower())
    if shape is None:
        raise UsageError(f"unknown model {name!r}; known models: {', '.join(SHAPES)}")
    return shape
