"""Chapter 8's checks: the reference and correct alternatives earn full marks, the blank
release earns nothing, and each known bug loses exactly the points of its own exercise."""

from tests.exercises import GradingContract, templated
from tools.chapters import SOURCES, load

CHAPTER = load(SOURCES / "08-fast-decoding.md")

ALTERNATIVES = {
    "a preallocated cache that doubles, einsum, a hand-written softmax, a dict state, a while "
    "loop over chunks": """
class KVCache(KVCache):
    def __init__(self):
        self._k = self._v = None
        self._t = 0

    @property
    def keys(self):
        return None if self._k is None else self._k[:, :, : self._t]

    @property
    def values(self):
        return None if self._v is None else self._v[:, :, : self._t]

    def append(self, key, value):
        n = key.shape[2]
        if self._k is None:
            self._k = key.new_empty(*key.shape[:2], max(4, n), key.shape[3])
            self._v = value.new_empty(*value.shape[:2], max(4, n), value.shape[3])
        while self._t + n > self._k.shape[2]:  # grow by doubling, keeping what is there
            self._k = torch.cat([self._k, torch.empty_like(self._k)], dim=2)
            self._v = torch.cat([self._v, torch.empty_like(self._v)], dim=2)
        self._k = self._k.clone()  # never write into a tensor handed out earlier
        self._v = self._v.clone()
        self._k[:, :, self._t : self._t + n] = key
        self._v[:, :, self._t : self._t + n] = value
        self._t += n
        return self.keys, self.values


def cached_self_attention(attn, x, cache):
    B, _, D = x.shape
    H = attn.num_heads
    Dh = D // H
    q = (x @ attn.W_q.weight.T + attn.W_q.bias).view(B, 1, H, Dh).permute(0, 2, 1, 3)
    k = (x @ attn.W_k.weight.T + attn.W_k.bias).view(B, 1, H, Dh).permute(0, 2, 1, 3)
    v = (x @ attn.W_v.weight.T + attn.W_v.bias).view(B, 1, H, Dh).permute(0, 2, 1, 3)
    keys, values = cache.append(k, v)
    s = torch.einsum("bhqd,bhkd->bhqk", q, keys) / Dh**0.5
    e = torch.exp(s - s.max(-1, keepdim=True).values)
    w = e / e.sum(-1, keepdim=True)
    heads = torch.einsum("bhqk,bhkd->bqhd", w, values).reshape(B, 1, D)
    return attn.W_o(heads), w


class CachedTransformer(CachedTransformer):
    def encode(self, src, src_lens):
        if self.model.training:
            raise RuntimeError("eval mode only")
        memory, _, mask = self.model.encode(src, src_lens)
        layers = self.model.decoder_layers
        state = {
            "cross": [
                (split_heads(l.cross_attn.W_k(memory), l.cross_attn.num_heads),
                 split_heads(l.cross_attn.W_v(memory), l.cross_attn.num_heads))
                for l in layers
            ],
            "caches": [KVCache() for _ in range(len(layers))],
        }
        return memory, state, mask

    def step(self, prev, state, memory, mask):
        if self.model.training:
            raise RuntimeError("eval mode only")
        m = self.model
        t = len(state["caches"][0])
        x = m.tgt_embed(prev.unsqueeze(1)) + m.positions.pe[t : t + 1].unsqueeze(0)
        for i, layer in enumerate(m.decoder_layers):
            k, v = state["cross"][i]
            ca = layer.cross_attn

            def cross(y):
                q = split_heads(ca.W_q(y), ca.num_heads)
                o, w = scaled_dot_product_attention(q, k, v, mask.unsqueeze(1).unsqueeze(1))
                return ca.W_o(merge_heads(o)), w

            if not layer.norm_first:
                a, _ = cached_self_attention(layer.self_attn, x, state["caches"][i])
                x = layer.norm1(x + a)
                c, w = cross(x)
                x = layer.norm2(x + c)
                x = layer.norm3(x + layer.ffn(x))
            else:
                a, _ = cached_self_attention(layer.self_attn, layer.norm1(x), state["caches"][i])
                x = x + a
                c, w = cross(layer.norm2(x))
                x = x + c
                x = x + layer.ffn(layer.norm3(x))
        return m.out(m.decoder_norm(x)).squeeze(1), state, w.mean(dim=1).squeeze(1)


def online_softmax_update(state, scores, values):
    m, l, acc = state
    m_new = torch.max(torch.cat([m, scores], dim=-1), dim=-1, keepdim=True).values
    finite = torch.isfinite(m_new)
    shift = m_new.masked_fill(~finite, 0.0)
    alpha = (m - shift).exp()
    p = (scores - shift).exp()
    return m_new, l * alpha + p.sum(-1, keepdim=True), acc * alpha + torch.einsum(
        "...lc,...cd->...ld", p, values
    )


def chunked_attention(query, key, value, attn_mask=None, chunk_size=1024):
    *batch, L, Dh = query.shape
    S = key.shape[-2]
    state = (
        torch.full((*batch, L, 1), float("-inf"), dtype=query.dtype),
        torch.zeros((*batch, L, 1), dtype=query.dtype),
        torch.zeros((*batch, L, value.shape[-1]), dtype=query.dtype),
    )
    mask = None
    if attn_mask is not None:
        mask = torch.broadcast_to(attn_mask, (*batch, L, S))
    start = 0
    while start < S:
        k = key[..., start : start + chunk_size, :]
        s = torch.einsum("...ld,...cd->...lc", query, k) * Dh**-0.5
        if mask is not None:
            s = torch.where(mask[..., start : start + chunk_size], s, float("-inf"))
        state = online_softmax_update(state, s, value[..., start : start + chunk_size, :])
        start += chunk_size
    _, l, acc = state
    return acc / l.clamp_min(torch.finfo(l.dtype).tiny) * (l > 0)
""",
    "a loop over heads, float64 inside, keys appended with torch.stack": """
def cached_self_attention(attn, x, cache):
    B, _, D = x.shape
    H = attn.num_heads
    k = split_heads(attn.W_k(x), H)
    v = split_heads(attn.W_v(x), H)
    q = split_heads(attn.W_q(x), H)
    keys, values = cache.append(k, v)
    outs, ws = [], []
    for h in range(H):
        s = q[:, h].double() @ keys[:, h].double().transpose(1, 2) / math.sqrt(D // H)
        w = torch.softmax(s, dim=-1)
        outs.append((w @ values[:, h].double()).to(x.dtype))
        ws.append(w.to(x.dtype))
    heads = torch.stack(outs, dim=1)
    return attn.W_o(merge_heads(heads)), torch.stack(ws, dim=1)


class KVCache(KVCache):
    def append(self, key, value):
        parts = [] if self.keys is None else [self.keys[:, :, i] for i in range(self.keys.shape[2])]
        vals = self.values
        vparts = [] if vals is None else [vals[:, :, i] for i in range(vals.shape[2])]
        parts += [key[:, :, i] for i in range(key.shape[2])]
        vparts += [value[:, :, i] for i in range(value.shape[2])]
        self.keys, self.values = torch.stack(parts, dim=2), torch.stack(vparts, dim=2)
        return self.keys, self.values


def chunked_attention(query, key, value, attn_mask=None, chunk_size=1024):
    dtype = query.dtype
    q, k, v = query.double(), key.double(), value.double()
    L, S = q.shape[-2], k.shape[-2]
    state = (q.new_full((*q.shape[:-1], 1), -math.inf), q.new_zeros((*q.shape[:-1], 1)),
             q.new_zeros((*q.shape[:-1], v.shape[-1])))
    for c in range(math.ceil(S / chunk_size)):
        sl = slice(c * chunk_size, min(S, (c + 1) * chunk_size))
        s = q @ k[..., sl, :].mT / math.sqrt(q.shape[-1])
        if attn_mask is not None:
            allowed = attn_mask.expand(*attn_mask.shape[:-2], L, S)[..., sl]
            s = s.masked_fill(allowed.logical_not(), -math.inf)
        state = online_softmax_update(state, s, v[..., sl, :])
    l, acc = state[1], state[2]
    safe = torch.where(l == 0, torch.ones_like(l), l)
    return (acc / safe).to(dtype)
""",
}

_CACHE = """
class KVCache(KVCache):
    def append(self, key, value):
        {body}
        return self.keys, self.values
"""
_CACHE_DEFAULTS = dict(
    body="if self.keys is None:\n"
    "            self.keys, self.values = key, value\n"
    "        else:\n"
    "            self.keys = torch.cat([self.keys, key], dim={dim})\n"
    "            self.values = torch.cat([self.values, value], dim={dim})"
)


def _cache(**changes):
    body = changes.get("body", _CACHE_DEFAULTS["body"]).replace("{dim}", changes.get("dim", "2"))
    return "kv_cache_tests", _CACHE.format(body=body)


_CSA = """
def cached_self_attention(attn, x, cache):
    H = attn.num_heads
    Dh = x.shape[-1] // H
    q = split_heads(attn.W_q(x), H)
    k = split_heads(attn.W_k(x), H)
    v = split_heads(attn.W_v(x), H)
    {attend}
    return {out}, weights
"""
_CSA_DEFAULTS = dict(
    attend="keys, values = cache.append(k, v)\n"
    "    heads, weights = scaled_dot_product_attention(q, keys, values)",
    out="attn.W_o(merge_heads(heads))",
)
_csa = templated("cached_self_attention_tests", _CSA, _CSA_DEFAULTS)

_STEP = """
class CachedTransformer(CachedTransformer):
    {extra}
    def step(self, prev, state, memory, mask):
        _require_eval(self.model)
        caches, cross = state
        model = self.model
        t = len(caches[0])
        x = model.tgt_embed(prev[:, None]) + model.positions.pe[{position}]
        allowed = mask[:, None, None, :]
        for layer, cache, (k, v) in zip(model.decoder_layers, caches, cross):
            ca = layer.cross_attn

            def cross_attend(y):
                {cross_kv}
                q = split_heads(ca.W_q(y), ca.num_heads)
                heads, w = scaled_dot_product_attention(q, k, v, allowed)
                return ca.W_o(merge_heads(heads)), w

            if {pre_ln}:
                x = x + cached_self_attention(layer.self_attn, layer.norm1(x), cache)[0]
                out, weights = cross_attend(layer.norm2(x))
                x = x + out
                x = x + layer.ffn(layer.norm3(x))
            else:
                x = layer.norm1(x + cached_self_attention(layer.self_attn, x, cache)[0])
                out, weights = cross_attend(x)
                x = layer.norm2(x + out)
                x = layer.norm3(x + layer.ffn(x))
        hidden = model.decoder_norm(x)
        return model.out(hidden[:, 0]), state, {weights}
"""
_STEP_DEFAULTS = dict(
    extra="",
    position="t",
    cross_kv="pass",
    pre_ln="layer.norm_first",
    weights="weights[:, :, 0].mean(1)",
)
_step = templated("cached_transformer_tests", _STEP, _STEP_DEFAULTS)

_ENCODE = """
class CachedTransformer(CachedTransformer):
    def encode(self, src, src_lens):
        {check}
        memory, _, mask = self.model.encode(src, src_lens)
        cross = []
        for layer in self.model.decoder_layers:
            ca = layer.cross_attn
            cross.append((split_heads(ca.W_k(memory), ca.num_heads),
                          split_heads(ca.W_v(memory), ca.num_heads)))
        {caches}
        return memory, (caches, cross), mask
"""
_ENCODE_DEFAULTS = dict(
    check="_require_eval(self.model)",
    caches="caches = [KVCache() for _ in self.model.decoder_layers]",
)
_encode = templated("cached_transformer_tests", _ENCODE, _ENCODE_DEFAULTS)

_UPDATE = """
def online_softmax_update(state, scores, values):
    m, l, acc = state
    m_new = torch.maximum(m, scores.amax(dim=-1, keepdim=True))
    ref = {ref}
    rescale = torch.exp(m - ref)
    p = torch.exp(scores - ref)
    {combine}
    return m_new, l_new, acc_new
"""
_UPDATE_DEFAULTS = dict(
    ref="torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)",
    combine="l_new = rescale * l + p.sum(dim=-1, keepdim=True)\n"
    "    acc_new = rescale * acc + p @ values",
)
_update = templated("online_softmax_update_tests", _UPDATE, _UPDATE_DEFAULTS)

_CHUNKED = """
def chunked_attention(query, key, value, attn_mask=None, chunk_size=1024):
    *batch, L, Dh = query.shape
    S, Dv = key.shape[-2], value.shape[-1]
    {scale}
    state = (query.new_full((*batch, L, 1), float("-inf")), query.new_zeros((*batch, L, 1)),
             query.new_zeros((*batch, L, Dv)))
    for start in range(0, {end}, chunk_size):
        stop = min(start + chunk_size, S)
        scores = {scores}
        if attn_mask is not None:
            allowed = attn_mask.expand(*attn_mask.shape[:-1], S)[..., start:stop]
            scores = scores.masked_fill({blocked}, float("-inf"))
        state = online_softmax_update(state, scores, value[..., start:stop, :])
    m, l, acc = state
    {finish}
"""
_CHUNKED_DEFAULTS = dict(
    scale="q = query / math.sqrt(Dh)",
    end="S",
    scores="q @ key[..., start:stop, :].transpose(-2, -1)",
    blocked="~allowed",
    finish="return acc / torch.where(l > 0, l, torch.ones_like(l))",
)
_chunked = templated("chunked_attention_tests", _CHUNKED, _CHUNKED_DEFAULTS)

MUTANTS = {
    # exercise 1: the cache
    "cache: concatenated along the batch axis": _cache(dim="0"),
    "cache: concatenated along the head axis": _cache(dim="1"),
    "cache: only the newest positions kept": _cache(body="self.keys, self.values = key, value"),
    "cache: new positions before the old ones": _cache(
        body="if self.keys is None:\n"
        "            self.keys, self.values = key, value\n"
        "        else:\n"
        "            self.keys = torch.cat([key, self.keys], dim=2)\n"
        "            self.values = torch.cat([value, self.values], dim=2)"
    ),
    "cache: shared across the batch (the first sentence's keys for every row)": _cache(
        body="key, value = key[:1].expand_as(key), value[:1].expand_as(value)\n"
        "        if self.keys is None:\n"
        "            self.keys, self.values = key, value\n"
        "        else:\n"
        "            self.keys = torch.cat([self.keys, key], dim=2)\n"
        "            self.values = torch.cat([self.values, value], dim=2)"
    ),
    "cache: storage on the class, shared by every cache": (
        "kv_cache_tests",
        """
class KVCache(KVCache):
    _shared = {}

    @property
    def keys(self):
        return self._shared.get("k")

    @keys.setter
    def keys(self, t):
        self._shared["k"] = t

    @property
    def values(self):
        return self._shared.get("v")

    @values.setter
    def values(self, t):
        self._shared["v"] = t

    def append(self, key, value):
        if self.keys is None:
            self.keys, self.values = key, value
        else:
            self.keys = torch.cat([self.keys, key], dim=2)
            self.values = torch.cat([self.values, value], dim=2)
        return self.keys, self.values
""",
    ),
    "cache: delegated to the stand-in that grades the decoder": (
        "kv_cache_tests",
        "from course_lib.checks.decoding import StandInCache as KVCache\n",
    ),
    "cache: the key handed in zeroed after appending": _cache(
        body="if self.keys is None:\n"
        "            self.keys, self.values = key.clone(), value\n"
        "        else:\n"
        "            self.keys = torch.cat([self.keys, key], dim=2)\n"
        "            self.values = torch.cat([self.values, value], dim=2)\n"
        "        key.zero_()"
    ),
    # exercise 2: one new position
    "self-attention: appended before attending and again, the token sees itself twice": _csa(
        attend="keys, values = cache.append(k, v)\n"
        "    keys, values = torch.cat([keys, k], 2), torch.cat([values, v], 2)\n"
        "    heads, weights = scaled_dot_product_attention(q, keys, values)"
    ),
    "self-attention: appended after attending, the token never sees itself": _csa(
        attend="keys, values = cache.append(k[:, :, :0], v[:, :, :0])\n"
        "    heads, weights = scaled_dot_product_attention(q, keys, values)\n"
        "    cache.append(k, v)"
    ),
    "self-attention: missing 1/sqrt(Dh)": _csa(
        attend="keys, values = cache.append(k, v)\n"
        "    heads, weights = scaled_dot_product_attention(q * math.sqrt(Dh), keys, values)"
    ),
    "self-attention: scaled by 1/sqrt(D)": _csa(
        attend="keys, values = cache.append(k, v)\n"
        "    heads, weights = scaled_dot_product_attention(q / math.sqrt(H), keys, values)"
    ),
    "self-attention: no output projection": _csa(out="merge_heads(heads)"),
    "self-attention: x modified in place": _csa(
        attend="keys, values = cache.append(k, v)\n"
        "    heads, weights = scaled_dot_product_attention(q, keys, values)\n"
        "    x.zero_()"
    ),
    # exercise 3: the cached decoder
    "decoder: positional encoding restarted at 0 for each token": _step(position="0"),
    "decoder: positional encoding of the next position": _step(position="t + 1"),
    "decoder: cross-attention keys recomputed from the decoder state": _step(
        cross_kv="k = split_heads(ca.W_k(y), ca.num_heads)\n"
        "                v = split_heads(ca.W_v(y), ca.num_heads)"
    ),
    "decoder: cross-attention keys recomputed from memory at every step": _step(
        cross_kv="k = split_heads(ca.W_k(memory), ca.num_heads)\n"
        "                v = split_heads(ca.W_v(memory), ca.num_heads)"
    ),
    "decoder: always post-LN": _step(pre_ln="False"),
    "decoder: always pre-LN": _step(pre_ln="True"),
    "decoder: the weights of the first head, not the average": _step(weights="weights[:, 0, 0]"),
    "decoder: cache kept on the adapter, never reset between sentences": _encode(
        caches="self.__dict__.setdefault('_caches', "
        "[KVCache() for _ in self.model.decoder_layers])\n"
        "        caches = self._caches"
    ),
    "decoder: one cache shared by all layers": _encode(
        caches="caches = [KVCache()] * len(self.model.decoder_layers)"
    ),
    "decoder: training mode not refused": _encode(check="pass"),
    # exercise 4: the online softmax
    "online softmax: the running maximum not applied to the earlier sums": _update(
        combine="l_new = l + p.sum(dim=-1, keepdim=True)\n    acc_new = acc + p @ values"
    ),
    "online softmax: the normaliser summed before rescaling": _update(
        combine="l_new = rescale * (l + p.sum(dim=-1, keepdim=True))\n"
        "    acc_new = rescale * (acc + p @ values)"
    ),
    "online softmax: NaN in rows with no allowed key yet": _update(ref="m_new"),
    "online softmax: no maximum subtracted (overflows)": _update(ref="torch.zeros_like(m_new)"),
    "online softmax: the state modified in place": _update(
        combine="l_new = l.mul_(rescale).add_(p.sum(dim=-1, keepdim=True))\n"
        "    acc_new = rescale * acc + p @ values"
    ),
    "online softmax: delegated to the stand-in that grades chunked_attention": (
        "online_softmax_update_tests",
        "from course_lib.checks.efficient import offset_update as online_softmax_update\n",
    ),
    # exercise 5: chunked attention
    "chunked: the last partial chunk dropped": _chunked(end="S - S % chunk_size"),
    "chunked: NaN in fully masked rows": _chunked(finish="return acc / l"),
    "chunked: missing 1/sqrt(Dh)": _chunked(scale="q = query"),
    "chunked: mask polarity inverted": _chunked(blocked="allowed"),
    "chunked: query modified in place": _chunked(scale="q = query.div_(math.sqrt(Dh))"),
    "chunked: the full L x S score matrix formed, then cut into chunks": _chunked(
        scale="q = query / math.sqrt(Dh)\n    full = q @ key.transpose(-2, -1)",
        scores="full[..., start:stop]",
    ),
    "chunked: NaN gradients in fully masked rows (divide, then select)": _chunked(
        finish="return torch.where(l > 0, acc / l, torch.zeros_like(acc))"
    ),
    "chunked: output detached from the graph": _chunked(
        finish="return (acc / torch.where(l > 0, l, torch.ones_like(l))).detach()"
    ),
}


class TestChapter8(GradingContract):
    chapter = CHAPTER
    alternatives = ALTERNATIVES
    mutants = MUTANTS
    prelude = "import math\n"
