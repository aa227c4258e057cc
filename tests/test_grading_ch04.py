"""Chapter 4's checks: the reference and correct alternatives earn full marks, the blank
release earns nothing, and each known bug loses exactly the points of its own exercise."""

from tests.exercises import GradingContract, templated
from tools.chapters import SOURCES, load

CHAPTER = load(SOURCES / "04-self-attention.md")

ALTERNATIVES = {
    "einsum and a hand-written masked softmax": """
def _attend(q, k, v, mask):
    scores = torch.einsum("...ld,...sd->...ls", q, k) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    top = scores.amax(-1, keepdim=True).clamp(min=torch.finfo(scores.dtype).min)
    e = (scores - top).exp()
    w = e / e.sum(-1, keepdim=True).clamp(min=torch.finfo(e.dtype).tiny)
    return torch.einsum("...ls,...sv->...lv", w, v), w


class SelfAttention(SelfAttention):
    def forward(self, x, attn_mask=None):
        q = torch.einsum("bli,oi->blo", x, self.W_q.weight)
        k = torch.einsum("bli,oi->blo", x, self.W_k.weight)
        v = torch.einsum("bli,oi->blo", x, self.W_v.weight)
        if self.W_q.bias is not None:
            q, k, v = q + self.W_q.bias, k + self.W_k.bias, v + self.W_v.bias
        output, weights = _attend(q, k, v, attn_mask)
        self.last_weights = weights.detach()
        return output, weights


def split_heads(x, num_heads):
    return x.reshape(*x.shape[:2], num_heads, -1).permute(0, 2, 1, 3)


def merge_heads(x):
    return x.permute(0, 2, 1, 3).flatten(2)


class MultiHeadAttention(MultiHeadAttention):
    def forward(self, query, key, value, attn_mask=None, need_weights=True):
        H = self.num_heads
        q = split_heads(torch.einsum("bld,ed->ble", query, self.W_q.weight), H)
        k = split_heads(torch.einsum("bsd,ed->bse", key, self.W_k.weight), H)
        v = split_heads(torch.einsum("bsd,ed->bse", value, self.W_v.weight), H)
        if self.W_q.bias is not None:
            q = q + self.W_q.bias.view(1, H, 1, -1)
            k = k + self.W_k.bias.view(1, H, 1, -1)
            v = v + self.W_v.bias.view(1, H, 1, -1)
        mask = attn_mask
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)
        if need_weights:
            heads, weights = _attend(q, k, v, mask)
            heads = torch.einsum("bhls,bhsd->bhld", self.dropout(weights), v)
        else:
            p = self.dropout.p if self.training else 0.0
            heads, weights = F.scaled_dot_product_attention(q, k, v, mask, dropout_p=p), None
        output = self.W_o(merge_heads(heads))
        self.last_weights = None if weights is None else weights.detach()
        return output, weights
""",
    "a loop over heads, each with its own slices of the weights, in float64": """
class SelfAttention(SelfAttention):
    def forward(self, x, attn_mask=None):
        xd = x.double()
        q, k, v = (
            F.linear(xd, m.weight.double(), None if m.bias is None else m.bias.double())
            for m in (self.W_q, self.W_k, self.W_v)
        )
        mask = None if attn_mask is None else attn_mask
        output, weights = scaled_dot_product_attention(q, k, v, mask)
        output, weights = output.to(x.dtype), weights.to(x.dtype)
        self.last_weights = weights.detach()
        return output, weights


def split_heads(x, num_heads):
    Dh = x.shape[-1] // num_heads
    return torch.stack([x[..., h * Dh : (h + 1) * Dh] for h in range(num_heads)], dim=1)


def merge_heads(x):
    return torch.cat([x[:, h] for h in range(x.shape[1])], dim=-1)


class MultiHeadAttention(MultiHeadAttention):
    def forward(self, query, key, value, attn_mask=None, need_weights=True):
        H, Dh = self.num_heads, self.d_head
        mask = attn_mask
        if mask is not None and mask.dim() == 4:
            per_head = [mask[:, h] for h in range(mask.shape[1])] * (H // mask.shape[1])
        else:
            per_head = [mask] * H
        outs, ws = [], []
        for h in range(H):
            rows = slice(h * Dh, (h + 1) * Dh)
            def proj(m, x):
                b = None if m.bias is None else m.bias[rows].double()
                return F.linear(x.double(), m.weight[rows].double(), b)
            q, k, v = proj(self.W_q, query), proj(self.W_k, key), proj(self.W_v, value)
            o, w = scaled_dot_product_attention(q, k, v, per_head[h])
            if self.training and self.dropout.p > 0:
                o = self.dropout(w) @ v
            outs.append(o)
            ws.append(w)
        output = self.W_o(torch.cat(outs, dim=-1).to(query.dtype))
        weights = torch.stack(ws, dim=1).to(query.dtype) if need_weights else None
        self.last_weights = None if weights is None else weights.detach()
        return output, weights
""",
    "one fused in_proj of width 3D for self-attention, then chunk": """
class MultiHeadAttention(MultiHeadAttention):
    def forward(self, query, key, value, attn_mask=None, need_weights=True):
        H = self.num_heads
        layers = (self.W_q, self.W_k, self.W_v)
        if query is key and key is value:  # self-attention: one matrix product for Q, K, V
            weight = torch.cat([m.weight for m in layers])  # (3D, D)
            bias = None if self.W_q.bias is None else torch.cat([m.bias for m in layers])
            q, k, v = F.linear(query, weight, bias).chunk(3, dim=-1)
        else:
            q, k, v = (m(t) for m, t in zip(layers, (query, key, value)))
        q, k, v = (split_heads(t, H) for t in (q, k, v))
        if attn_mask is not None and attn_mask.dim() == 3:
            attn_mask = attn_mask[:, None]
        p = self.dropout.p if self.training else 0.0
        if need_weights:
            _, weights = scaled_dot_product_attention(q, k, v, attn_mask)
            heads = F.dropout(weights, p, training=self.training) @ v
        else:
            heads = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
            weights = None
        output = self.W_o(merge_heads(heads))
        self.last_weights = None if weights is None else weights.detach()
        return output, weights
""",
}

# --------------------------------------------------------------------------------- mutants

_SELF = """
class SelfAttention(SelfAttention):
    def forward(self, x, attn_mask=None):
        {before}
        q, k, v = {q}, {k}, {v}
        output, weights = {attend}
        self.last_weights = weights.detach()
        return output, weights
"""
_SELF_DEFAULTS = dict(
    before="pass",
    q="self.W_q(x)",
    k="self.W_k(x)",
    v="self.W_v(x)",
    attend="scaled_dot_product_attention(q, k, v, attn_mask)",
)


_self = templated("self_attention_tests", _SELF, _SELF_DEFAULTS)


_MHA = """
class MultiHeadAttention(MultiHeadAttention):
    def forward(self, query, key, value, attn_mask=None, need_weights=True):
        H, Dh = self.num_heads, self.d_head
        (B, L, D), S = query.shape, key.shape[1]
        {before}
        q, k, v = {q}, {k}, {v}
        if attn_mask is not None and attn_mask.dim() == 3:
            attn_mask = {mask3}
        if need_weights:
            {attend}
            if self.training and self.dropout.p > 0:
                {drop}
        else:
            p = self.dropout.p if self.training else 0.0
            heads, weights = {fused}, None
        output = {output}
        self.last_weights = None if weights is None else weights.detach()
        return output, weights
"""
_MHA_DEFAULTS = dict(
    before="pass",
    q="split_heads(self.W_q(query), H)",
    k="split_heads(self.W_k(key), H)",
    v="split_heads(self.W_v(value), H)",
    mask3="attn_mask[:, None]",
    attend="heads, weights = scaled_dot_product_attention(q, k, v, attn_mask)",
    drop="heads = self.dropout(weights) @ v",
    fused="F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)",
    output="self.W_o(merge_heads(heads))",
)


_mha = templated("multi_head_attention_tests", _MHA, _MHA_DEFAULTS)


# Attention written out by hand, with a switch for the softmax axis (a mutant's own attention).
_OWN_ATTENTION = """
def _own_attention(q, k, v, mask, dim=-1, scale=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1] if scale is None else scale)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=dim).nan_to_num(0.0)
    return weights @ v, weights
"""


def _transposed(layer: str, x: str) -> str:
    return f"split_heads({x} @ self.{layer}.weight + self.{layer}.bias, H)"


def _split(body: str) -> tuple[str, str]:
    return "split_heads_tests", f"def split_heads(x, num_heads):\n    {body}\n"


def _merge(body: str) -> tuple[str, str]:
    return "merge_heads_tests", f"def merge_heads(x):\n    {body}\n"


MUTANTS = {
    # SelfAttention
    "self: no projections (Q = K = V = x)": _self(q="x", k="x", v="x"),
    "self: Linear weight used transposed": _self(
        q="x @ self.W_q.weight", k="x @ self.W_k.weight", v="x @ self.W_v.weight"
    ),
    "self: keys projected with W_q": _self(k="self.W_q(x)"),
    "self: values not projected": _self(v="x"),
    "self: mask ignored": _self(attend="scaled_dot_product_attention(q, k, v)"),
    "self: mask polarity inverted": _self(
        attend="scaled_dot_product_attention(q, k, v, None if attn_mask is None else ~attn_mask)"
    ),
    "self: softmax over the query axis": _self(attend="_own_attention(q, k, v, attn_mask, dim=-2)"),
    "self: scaled by the input width": _self(
        attend="_own_attention(q, k, v, attn_mask, scale=x.shape[-1])"
    ),
    "self: input modified in place": _self(before="x.mul_(2.0)\n        x = x / 2.0"),
    # split_heads
    "split: view without transpose": _split(
        "B, L, D = x.shape\n    return x.view(B, num_heads, L, D // num_heads)"
    ),
    "split: interleaved columns": _split(
        "B, L, D = x.shape\n    return x.view(B, L, D // num_heads, num_heads).permute(0, 3, 1, 2)"
    ),
    "split: heads axis not moved": _split(
        "B, L, D = x.shape\n    return x.view(B, L, num_heads, D // num_heads)"
    ),
    "split: detached": _split(
        "B, L, D = x.shape\n    return x.detach().view(B, L, num_heads, -1).transpose(1, 2)"
    ),
    # merge_heads
    "merge: reshape without transposing back": _merge(
        "B, H, L, Dh = x.shape\n    return x.reshape(B, L, H * Dh)"
    ),
    "merge: heads interleaved": _merge(
        "B, H, L, Dh = x.shape\n    return x.permute(0, 2, 3, 1).reshape(B, L, H * Dh)"
    ),
    "merge: view of a non-contiguous tensor": _merge(
        "B, H, L, Dh = x.shape\n    return x.transpose(1, 2).view(B, L, H * Dh)"
    ),
    "merge: input transposed in place": _merge(
        "B, H, L, Dh = x.shape\n    return x.transpose_(1, 2).reshape(B, L, H * Dh)"
    ),
    # MultiHeadAttention
    "mha: scaled by sqrt(D) instead of sqrt(Dh)": _mha(
        attend="heads, weights = _own_attention(q, k, v, attn_mask, scale=D)"
    ),
    "mha: softmax over the query axis": _mha(
        attend="heads, weights = _own_attention(q, k, v, attn_mask, dim=-2)"
    ),
    "mha: no output projection": _mha(output="merge_heads(heads)"),
    "mha: Linear weights used transposed": _mha(
        q=_transposed("W_q", "query"),
        k=_transposed("W_k", "key"),
        v=_transposed("W_v", "value"),
        output="merge_heads(heads) @ self.W_o.weight + self.W_o.bias",
    ),
    "mha: query and key swapped": _mha(
        q="split_heads(self.W_q(key), H)", k="split_heads(self.W_k(query), H)"
    ),
    "mha: mask not broadcast over heads": _mha(mask3="attn_mask"),
    "mha: mask on the wrong axis": _mha(mask3="attn_mask[:, :, None]"),
    "mha: mask polarity inverted": _mha(
        before="attn_mask = None if attn_mask is None else ~attn_mask"
    ),
    "mha: dropout active in eval": _mha(
        attend="heads, weights = scaled_dot_product_attention(q, k, v, attn_mask)\n"
        "            heads = F.dropout(weights, self.dropout.p, training=True) @ v"
    ),
    "mha: no dropout in training": _mha(drop="pass"),
    "mha: heads share one projection": _mha(
        q="split_heads(self.W_q(query), H)[:, :1].expand(-1, H, -1, -1)",
        k="split_heads(self.W_k(key), H)[:, :1].expand(-1, H, -1, -1)",
        v="split_heads(self.W_v(value), H)[:, :1].expand(-1, H, -1, -1)",
    ),
    "mha: split with view but no transpose": _mha(
        q="self.W_q(query).view(B, H, L, Dh)",
        k="self.W_k(key).view(B, H, S, Dh)",
        v="self.W_v(value).view(B, H, S, Dh)",
    ),
    "mha: merge without transposing back": _mha(output="self.W_o(heads.reshape(B, L, D))"),
    "mha: fused path ignores the mask": _mha(
        fused="F.scaled_dot_product_attention(q, k, v, dropout_p=p)"
    ),
    "mha: fused path with dropout in eval": _mha(
        fused="F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p=self.dropout.p)"
    ),
    "mha: query modified in place": _mha(before="query.mul_(1.5)\n        query = query / 1.5"),
}


class TestChapter4(GradingContract):
    chapter = CHAPTER
    alternatives = ALTERNATIVES
    mutants = MUTANTS
    prelude = "import math\n" + _OWN_ATTENTION
