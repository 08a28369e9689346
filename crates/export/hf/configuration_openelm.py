"""OpenELM configuration for Hugging Face `transformers` (remote code), written for corenet-rs.

The keys are the ones corenet-rs's exporter writes to `config.json` (CoreNet's `GPTConfig` field
names): per-layer `num_query_heads` / `num_kv_heads` lists, `ffn_multipliers` expanded to one
value per layer, `qkv_multipliers` as the `[min, max]` range, `head_dim`, `model_dim`, ...

Layer-wise scaling (the per-layer widths) is resolved here once, with the same arithmetic as
corenet-rs (`crates/model/src/scaling.rs`), so the model only reads finished per-layer numbers.
"""

from transformers import PretrainedConfig

# The activations and norms the modeling code implements. "silu" is accepted as a synonym of
# CoreNet's "swish", as in corenet-rs.
_ACTIVATIONS = ("swish", "silu")
_NORMS = ("rms_norm",)


def make_divisible(value, divisor):
    """CoreNet's rounding of a width to a multiple of `divisor`: the nearest multiple (ties up,
    at least `divisor`), plus one more `divisor` if that lost more than 10 % of `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return int(rounded)


def per_layer(multipliers, num_layers, name):
    """One multiplier per layer from a number (every layer the same), a `[min, max]` range
    (evenly spaced over the layers, each rounded to 2 decimals) or a full per-layer list.

    A two-element list is read as a range even when there are two layers, as corenet-rs does.
    """
    if isinstance(multipliers, (int, float)):
        return [float(multipliers)] * num_layers
    values = [float(v) for v in multipliers]
    if len(values) == 2:
        low, high = values
        if num_layers == 1:
            return [round(low, 2)]
        # NumPy linspace: start + i * step, with the last point forced to exactly `high`.
        step = (high - low) / (num_layers - 1)
        points = [i * step + low for i in range(num_layers)]
        points[-1] = high
        return [round(p, 2) for p in points]
    if len(values) == num_layers and num_layers > 0:
        return values
    raise ValueError(
        f"{name}: expected a number, a [min, max] pair or {num_layers} per-layer values, "
        f"got {len(values)} values"
    )


class OpenELMConfig(PretrainedConfig):
    """The OpenELM architecture: a decoder-only transformer whose query/KV head counts and FFN
    widths grow layer by layer.

    After construction, `num_query_heads`, `num_kv_heads` and `ffn_multipliers` are per-layer
    lists (computed from the multipliers when not given), and `tie_word_embeddings` equals
    `share_input_output_layers`.
    """

    model_type = "openelm"
    # Standard names some library code reads (DynamicCache(config=...) needs `num_hidden_layers`;
    # lm-eval reads `max_position_embeddings` for its context length).
    attribute_map = {
        "num_hidden_layers": "num_transformer_layers",
        "hidden_size": "model_dim",
        "max_position_embeddings": "max_context_length",
    }

    def __init__(
        self,
        vocab_size=32000,
        max_context_length=2048,
        num_transformer_layers=12,
        model_dim=2048,
        head_dim=128,
        qkv_multipliers=1.0,
        num_query_heads=None,
        num_kv_heads=None,
        num_gqa_groups=1,
        ffn_multipliers=4.0,
        ffn_with_glu=True,
        ffn_dim_divisor=256,
        activation_fn_name="swish",
        normalization_layer_name="rms_norm",
        normalize_qk_projections=False,
        share_input_output_layers=False,
        rope_freq_constant=10000.0,
        rope_max_length=4096,
        initializer_range=0.02,
        use_cache=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        **kwargs,
    ):
        # Defaults are CoreNet's GPTConfig defaults (as corenet-rs's OpenElmConfig::default).
        self.vocab_size = vocab_size
        self.max_context_length = max_context_length
        self.num_transformer_layers = num_transformer_layers
        self.model_dim = model_dim
        self.head_dim = head_dim
        self.qkv_multipliers = qkv_multipliers
        self.num_gqa_groups = num_gqa_groups
        self.ffn_with_glu = ffn_with_glu
        self.ffn_dim_divisor = ffn_dim_divisor
        self.activation_fn_name = activation_fn_name
        self.normalization_layer_name = normalization_layer_name
        self.normalize_qk_projections = normalize_qk_projections
        self.share_input_output_layers = share_input_output_layers
        self.rope_freq_constant = rope_freq_constant
        self.rope_max_length = rope_max_length
        self.initializer_range = initializer_range
        # Set here rather than passed on: transformers 5 drops generation keys such as
        # `use_cache` from the kwargs it stores.
        self.use_cache = use_cache
        self._check_scalars()
        self.ffn_multipliers = per_layer(ffn_multipliers, num_transformer_layers, "ffn_multipliers")
        self.num_query_heads, self.num_kv_heads = self._resolve_heads(num_query_heads, num_kv_heads)

        # One switch for weight tying: CoreNet's `share_input_output_layers`. A conflicting
        # `tie_word_embeddings` (e.g. a hand-edited config) is an error rather than a guess.
        tie = kwargs.pop("tie_word_embeddings", None)
        if tie is not None and bool(tie) != bool(share_input_output_layers):
            raise ValueError(
                f"tie_word_embeddings={tie} contradicts share_input_output_layers="
                f"{share_input_output_layers}; set share_input_output_layers only"
            )
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=bool(share_input_output_layers),
            **kwargs,
        )

    def _check_scalars(self):
        for name in ("vocab_size", "num_transformer_layers", "model_dim", "head_dim",
                     "num_gqa_groups", "ffn_dim_divisor", "rope_max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} is odd; rotary embeddings rotate half of it")
        if not self.rope_freq_constant > 0:
            raise ValueError(f"rope_freq_constant must be positive, got {self.rope_freq_constant!r}")
        if self.activation_fn_name not in _ACTIVATIONS:
            raise ValueError(f"activation_fn_name {self.activation_fn_name!r} is not supported "
                             f"(supported: {', '.join(_ACTIVATIONS)})")
        if self.normalization_layer_name not in _NORMS:
            raise ValueError(f"normalization_layer_name {self.normalization_layer_name!r} is not "
                             f"supported (supported: {', '.join(_NORMS)})")

    def _heads_from_multipliers(self):
        """Per-layer (query heads, KV heads) from `qkv_multipliers`, CoreNet's derivation."""
        n, d, h, g = self.num_transformer_layers, self.model_dim, self.head_dim, self.num_gqa_groups
        query, kv = [], []
        for i, alpha in enumerate(per_layer(self.qkv_multipliers, n, "qkv_multipliers")):
            q_dim = make_divisible(d * alpha, h * g)
            if q_dim % h:
                raise ValueError(f"head_dim {h} does not divide layer {i}'s query width {q_dim}")
            query.append(q_dim // h)
            kv.append(q_dim // h // g)
        return query, kv

    def _resolve_heads(self, num_query_heads, num_kv_heads):
        """The stored per-layer head lists, or the ones the multipliers give when absent.
        Stored lists must agree with the multipliers (corenet-rs checks the same on read)."""
        derived_q, derived_kv = self._heads_from_multipliers()
        resolved = []
        for name, stored, derived in (("num_query_heads", num_query_heads, derived_q),
                                      ("num_kv_heads", num_kv_heads, derived_kv)):
            if stored is None:
                resolved.append(derived)
                continue
            stored = [int(v) for v in stored]
            if stored != derived:
                raise ValueError(f"{name} is {stored}, but qkv_multipliers/num_gqa_groups "
                                 f"give {derived}")
            resolved.append(stored)
        for i, (q, kv) in enumerate(zip(*resolved)):
            if kv < 1 or q % kv:
                raise ValueError(f"layer {i}: {q} query heads cannot share {kv} KV heads evenly")
        return resolved

    def ffn_dims(self):
        """Per-layer FFN hidden width F_i = make_divisible(beta_i * model_dim, ffn_dim_divisor)."""
        return [make_divisible(beta * self.model_dim, self.ffn_dim_divisor)
                for beta in self.ffn_multipliers]


__all__ = ["OpenELMConfig"]
