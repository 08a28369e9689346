"""OpenELM for Hugging Face `transformers` (remote code), written for corenet-rs.

The numerics follow corenet-rs's model (`crates/model/src/*.rs`), which follows CoreNet:
- RMSNorm with eps 1e-6, statistics in float32, cast back to the input dtype, then scaled;
- fused bias-free QKV projection, rows [Q heads | K heads | V heads], head-major;
- per-head q/k RMSNorm over head_dim (one weight per layer), before RoPE;
- rotate-half RoPE over the full head dim, base `rope_freq_constant`, computed in float32;
- grouped-query attention where query head j reads KV head j // (Hq / Hkv);
- SwiGLU FFN, proj_1 = [gate | up] along its output rows;
- pre-norm residual layers, final RMSNorm, output head tied to the token embedding by default.

Shapes in comments: B batch, T new tokens, S keys (cached + new), C model_dim, H heads,
D head_dim, F FFN width, V vocabulary.

The KV cache is a `transformers` Cache (DynamicCache) and stores keys after RoPE, so each step
only rotates its new tokens, at their position ids.
"""

import torch
import torch.nn.functional as F
from torch import nn

import transformers
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_openelm import OpenELMConfig

# CoreNet never passes eps to its norms, so every norm (q/k norms included) uses its default.
RMS_NORM_EPS = 1e-6

_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])

# transformers 5 calls the cache argument and output field `cache`; 4.x calls them
# `past_key_values`. Outputs are built with whichever name this version declares.
_CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


class OpenELMRMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        """x: (..., C) -> (..., C), normalised over the last axis."""
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + RMS_NORM_EPS)
        # Cast back before the weight multiply, as CoreNet (and corenet-rs) do.
        return y.to(x.dtype) * self.weight


class OpenELMRope(nn.Module):
    """cos/sin tables for rotate-half RoPE.

    The tables are plain attributes, not buffers: nothing to save or load, and they are built
    lazily on the device in use (transformers may construct the model on the meta device).
    They cover `rope_max_length` positions and are rebuilt longer when a position id exceeds
    that; a position's row does not depend on the table length, so results are unchanged.
    """

    def __init__(self, head_dim, base, max_positions):
        super().__init__()
        self.head_dim = head_dim
        self.base = float(base)
        self.max_positions = max_positions
        self._cos = None
        self._sin = None

    def _build(self, positions, device):
        # inv_freq_j = base^(-2j/D), computed in float32 as corenet-rs does.
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim
        base = torch.tensor(self.base, dtype=torch.float32, device=device)
        inv_freq = torch.reciprocal(torch.pow(base, exponents))  # (D/2,)
        pos = torch.arange(positions, dtype=torch.float32, device=device)
        angles = torch.outer(pos, inv_freq)  # (P, D/2)
        angles = torch.cat([angles, angles], dim=-1)  # (P, D): the same angle for both halves
        self._cos, self._sin = angles.cos(), angles.sin()

    def forward(self, position_ids):
        """position_ids: (B, T) int -> cos, sin: (B, 1, T, D) float32, ready to broadcast over heads."""
        needed = int(position_ids.max()) + 1 if position_ids.numel() else 0
        stale = self._cos is None or self._cos.device != position_ids.device
        if stale or needed > self._cos.shape[0]:
            self._build(max(self.max_positions, needed), position_ids.device)
        return self._cos[position_ids].unsqueeze(1), self._sin[position_ids].unsqueeze(1)


def apply_rope(x, cos, sin):
    """x: (B, H, T, D) -> same shape and dtype, rotated in float32 (rotate-half layout)."""
    xf = x.float()
    half = x.shape[-1] // 2
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


class OpenELMAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.query_heads = config.num_query_heads[layer_idx]
        self.kv_heads = config.num_kv_heads[layer_idx]
        self.head_dim = config.head_dim
        heads = self.query_heads + 2 * self.kv_heads
        self.qkv_proj = nn.Linear(config.model_dim, heads * self.head_dim, bias=False)
        if config.normalize_qk_projections:
            self.q_norm = OpenELMRMSNorm(self.head_dim)
            self.k_norm = OpenELMRMSNorm(self.head_dim)
        else:
            self.q_norm = self.k_norm = None
        self.out_proj = nn.Linear(self.query_heads * self.head_dim, config.model_dim, bias=False)

    def forward(self, x, cos, sin, mask, cache):
        """x: (B, T, C) -> (B, T, C).

        mask: None for plain causal attention (queries are the last T of the S keys and no key is
        padding), else a bool (B, 1, T, S) mask, True where a query may attend a key, or a float
        mask added to the scores. cache: a transformers Cache or None.
        """
        b, t, _ = x.shape
        hq, hkv, hd = self.query_heads, self.kv_heads, self.head_dim
        qkv = self.qkv_proj(x).view(b, t, hq + 2 * hkv, hd).transpose(1, 2)  # (B, Hq+2Hkv, T, D)
        # Split by head counts, not in three equal parts: K and V have fewer heads than Q.
        q, k, v = qkv.split([hq, hkv, hkv], dim=1)  # (B, Hq, T, D), (B, Hkv, T, D) x 2
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, Hkv, S, D)
        group = hq // hkv
        if group > 1:
            # Consecutive query heads share a KV head (CoreNet's repeat_interleave).
            k = k.repeat_interleave(group, dim=1)  # (B, Hq, S, D)
            v = v.repeat_interleave(group, dim=1)
        # SDPA's is_causal aligns the triangle top-left, right only when T == S; any other case
        # arrives here with an explicit mask (or T == 1, which may attend to every key).
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and t > 1)
        y = y.transpose(1, 2).reshape(b, t, hq * hd)  # (B, T, Hq*D), heads in order
        return self.out_proj(y)


class OpenELMFeedForward(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        ffn_dim = config.ffn_dims()[layer_idx]
        self.glu = config.ffn_with_glu
        self.proj_1 = nn.Linear(config.model_dim, 2 * ffn_dim if self.glu else ffn_dim, bias=False)
        self.proj_2 = nn.Linear(ffn_dim, config.model_dim, bias=False)

    def forward(self, x):
        """x: (B, T, C) -> (B, T, C)."""
        h = self.proj_1(x)  # (B, T, 2F) with GLU, else (B, T, F)
        if self.glu:
            gate, up = h.chunk(2, dim=-1)  # first half is the gate
            h = F.silu(gate) * up  # (B, T, F)
        else:
            h = F.silu(h)
        return self.proj_2(h)


class OpenELMDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attn_norm = OpenELMRMSNorm(config.model_dim)
        self.attn = OpenELMAttention(config, layer_idx)
        self.ffn_norm = OpenELMRMSNorm(config.model_dim)
        self.ffn = OpenELMFeedForward(config, layer_idx)

    def forward(self, x, cos, sin, mask, cache):
        """x: (B, T, C) -> (B, T, C), pre-norm residual blocks."""
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache)
        return x + self.ffn(self.ffn_norm(x))


class OpenELMPreTrainedModel(PreTrainedModel):
    config_class = OpenELMConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["OpenELMDecoderLayer"]
    _supports_sdpa = True
    # transformers 4.4x only hands a Cache object to models that declare it.
    _supports_cache_class = True

    def _init_weights(self, module):
        # Only used for weights a checkpoint lacks (and for models built from a config). The
        # nn.init calls are looked up at call time, so transformers 5 can guard them against
        # overwriting loaded tensors.
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, OpenELMRMSNorm):
            nn.init.ones_(module.weight)


def _padding_free(attention_mask):
    """True when a 2D mask masks nothing, so the fast causal path applies."""
    return attention_mask is None or (attention_mask.dim() == 2 and bool(attention_mask.all()))


def _attention_mask(attention_mask, batch, t, past, device):
    """The mask the attention layers take: None (plain causal) or bool (B, 1, T, S).

    attention_mask: None, a 2D (B, S) padding mask over cached + new tokens (1 = real token,
    0 = padding), or an already prepared 4D mask, passed through as is.
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask
    s = past + t
    if _padding_free(attention_mask) and (past == 0 or t == 1):
        return None
    if attention_mask is not None and attention_mask.shape[-1] != s:
        raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions, but there are "
                         f"{past} cached and {t} new tokens")
    key = torch.arange(s, device=device)  # (S,)
    query = torch.arange(t, device=device) + past  # (T,): queries are the last T keys
    allowed = (key[None, :] <= query[:, None]).expand(batch, t, s)  # (B, T, S) causal
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, :].bool()
    # A query always sees its own key. That changes nothing for real tokens, and keeps a padding
    # query (left padding) from having no key at all, whose softmax would be NaN.
    allowed = allowed | (key[None, :] == query[:, None])
    return allowed[:, None]  # (B, 1, T, S)


def _as_cache(past_key_values):
    """A Cache from what the caller passed (a Cache, a legacy tuple on 4.x, or None)."""
    if past_key_values is None or isinstance(past_key_values, Cache):
        return past_key_values
    if hasattr(DynamicCache, "from_legacy_cache"):
        return DynamicCache.from_legacy_cache(past_key_values)
    raise TypeError("past_key_values must be a transformers Cache (e.g. DynamicCache)")


class OpenELMModel(OpenELMPreTrainedModel):
    """Token embedding -> pre-norm decoder layers -> final RMSNorm; returns hidden states."""

    def __init__(self, config):
        super().__init__(config)
        self.token_embeddings = nn.Embedding(config.vocab_size, config.model_dim)
        self.layers = nn.ModuleList(
            OpenELMDecoderLayer(config, i) for i in range(config.num_transformer_layers)
        )
        self.norm = OpenELMRMSNorm(config.model_dim)
        self.rope = OpenELMRope(config.head_dim, config.rope_freq_constant, config.rope_max_length)
        self.post_init()

    def get_input_embeddings(self):
        return self.token_embeddings

    def set_input_embeddings(self, value):
        self.token_embeddings = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache=None,
        output_hidden_states=None,
        return_dict=None,
        cache=None,
        **kwargs,
    ):
        """input_ids: (B, T) int, or inputs_embeds: (B, T, C). attention_mask: (B, S) with
        S = cached + T. position_ids: (B, T); when absent, cached length + 0..T-1."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        output_hidden_states = (self.config.output_hidden_states
                                if output_hidden_states is None else output_hidden_states)
        return_dict = self.config.return_dict if return_dict is None else return_dict

        x = self.token_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        b, t = x.shape[:2]
        cache = _as_cache(cache if cache is not None else past_key_values)
        if use_cache and cache is None:
            cache = DynamicCache()
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = (torch.arange(t, device=x.device) + past).unsqueeze(0).expand(b, t)
        cos, sin = self.rope(position_ids)  # (B, 1, T, D) each
        mask = _attention_mask(attention_mask, b, t, past, x.device)

        hidden_states = (x,) if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache if use_cache else None)
            if output_hidden_states:
                hidden_states += (x,)
        x = self.norm(x)
        if output_hidden_states:
            # The last entry is the normalised output, as in other transformers decoders.
            hidden_states = hidden_states[:-1] + (x,)
        cache = cache if use_cache else None
        if not return_dict:
            return tuple(v for v in (x, cache, hidden_states) if v is not None)
        return BaseModelOutputWithPast(last_hidden_state=x, hidden_states=hidden_states,
                                       **{_CACHE_FIELD: cache})


class OpenELMForCausalLM(OpenELMPreTrainedModel, GenerationMixin):
    # With tie_word_embeddings (= share_input_output_layers) the head is the embedding matrix and
    # checkpoints carry no lm_head.weight. transformers 5 takes a {target: source} mapping,
    # 4.x a list of targets (tied through get_output_embeddings / get_input_embeddings).
    if _TRANSFORMERS_MAJOR >= 5:
        _tied_weights_keys = {"lm_head.weight": "transformer.token_embeddings.weight"}
    else:
        _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config):
        super().__init__(config)
        self.transformer = OpenELMModel(config)
        self.lm_head = nn.Linear(config.model_dim, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.token_embeddings

    def set_input_embeddings(self, value):
        self.transformer.token_embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_hidden_states=None,
        return_dict=None,
        logits_to_keep=0,
        cache=None,
        **kwargs,
    ):
        """Logits (B, T, V) in the model's dtype; with labels (B, T), also the mean next-token
        cross-entropy over labels != -100. logits_to_keep=k > 0 computes only the last k rows."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        out = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            cache=cache if cache is not None else past_key_values,
        )
        h = out.last_hidden_state  # (B, T, C)
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h)  # (B, T, V)
        loss = None
        if labels is not None:
            # Position i predicts token i + 1.
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1).to(logits.device),
                ignore_index=-100,
            )
        cache = getattr(out, _CACHE_FIELD)
        if not return_dict:
            rest = tuple(v for v in (logits, cache, out.hidden_states) if v is not None)
            return (loss,) + rest if loss is not None else rest
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                      **{_CACHE_FIELD: cache})


__all__ = ["OpenELMModel", "OpenELMForCausalLM", "OpenELMPreTrainedModel"]
