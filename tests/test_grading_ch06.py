"""Chapter 6's checks: the reference and correct alternatives earn full marks, the blank
release earns nothing, and each known bug loses exactly the points of its own exercise."""

from tests.exercises import GradingContract, templated
from tools.chapters import SOURCES, load

CHAPTER = load(SOURCES / "06-transformer.md")

ALTERNATIVES = {
    "F.layer_norm, F.linear, explicit branches, a loop building the stacks": """
class LayerNorm(LayerNorm):
    def forward(self, x):
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


class FeedForward(FeedForward):
    def forward(self, x):
        h = F.relu(F.linear(x, self.linear1.weight, self.linear1.bias))
        return F.linear(self.dropout(h), self.linear2.weight, self.linear2.bias)


class EncoderLayer(EncoderLayer):
    def forward(self, x, src_mask=None):
        if self.norm_first:
            h = self.norm1(x)
            x = x + self.dropout(self.self_attn(h, h, h, src_mask)[0])
            h = self.norm2(x)
            return x + self.dropout(self.ffn(h))
        a, _ = self.self_attn(x, x, x, src_mask)
        x = self.norm1(x + self.dropout(a))
        return self.norm2(x + self.dropout(self.ffn(x)))


class Transformer(Transformer):
    def __init__(self, src_vocab, tgt_vocab, d_model, num_heads, num_layers, d_ff,
                 dropout=0.1, norm_first=False, max_len=512):
        super().__init__(src_vocab, tgt_vocab, d_model, num_heads, 0, d_ff, dropout,
                         norm_first, max_len)
        for _ in range(num_layers):
            self.encoder_layers.append(EncoderLayer(d_model, num_heads, d_ff, dropout, norm_first))
            self.decoder_layers.append(DecoderLayer(d_model, num_heads, d_ff, dropout, norm_first))

    def encode(self, src, src_lens):
        S = src.shape[1]
        real = torch.arange(S, device=src.device)[None, :] < src_lens[:, None].to(src.device)
        x = self.src_embed(src)
        x = self.positions(x)
        for i in range(len(self.encoder_layers)):
            x = self.encoder_layers[i](x, real.unsqueeze(1))
        return self.encoder_norm(x), src.new_zeros(src.shape[0], 0), real

    def decode(self, tgt_in, memory, mask):
        T = tgt_in.shape[1]
        allowed = torch.tril(torch.ones(T, T, dtype=torch.bool, device=tgt_in.device))
        y = self.positions(self.tgt_embed(tgt_in))
        for layer in self.decoder_layers:
            y = layer(y, memory, allowed.expand(y.shape[0], T, T), mask.unsqueeze(1))
        return self.decoder_norm(y)
""",
    "a hand-written norm in float64, and a decoder that projects K/V for cross-attention once": """
class LayerNorm(LayerNorm):
    def forward(self, x):
        xd = x.double()
        centred = xd - xd.mean(-1, keepdim=True)
        std = (centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        return (centred / std * self.weight.double() + self.bias.double()).to(x.dtype)


class DecoderLayer(DecoderLayer):
    def forward(self, x, memory, tgt_mask=None, memory_mask=None):
        ca = self.cross_attn
        H = ca.num_heads
        # the memory's keys and values, projected once with one fused matrix
        kv = F.linear(memory, torch.cat([ca.W_k.weight, ca.W_v.weight]),
                      torch.cat([ca.W_k.bias, ca.W_v.bias]))
        k, v = (split_heads(t, H) for t in kv.chunk(2, dim=-1))
        mask = None if memory_mask is None else memory_mask[:, None]

        def cross(y):
            q = split_heads(ca.W_q(y), H)
            heads, w = scaled_dot_product_attention(q, k, v, mask)
            ca.last_weights = w.detach()
            return self.dropout(ca.W_o(merge_heads(ca.dropout(w) @ v if ca.training else heads)))

        def masked_self(y):
            return self.dropout(self.self_attn(y, y, y, tgt_mask)[0])

        if self.norm_first:
            x = x + masked_self(self.norm1(x))
            x = x + cross(self.norm2(x))
            return x + self.dropout(self.ffn(self.norm3(x)))
        x = self.norm1(x + masked_self(x))
        x = self.norm2(x + cross(x))
        return self.norm3(x + self.dropout(self.ffn(x)))
""",
}

_LN = """
class LayerNorm(LayerNorm):
    def forward(self, x):
        mean = x.mean(dim={dim}, keepdim=True)
        var = x.var(dim={dim}, unbiased={unbiased}, keepdim=True)
        return {result}
"""
_LN_DEFAULTS = dict(
    dim=-1,
    unbiased=False,
    result="(x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias",
)


_ln = templated("layer_norm_tests", _LN, _LN_DEFAULTS)


def _ffn(body: str) -> tuple[str, str]:
    return "feed_forward_tests", (
        f"class FeedForward(FeedForward):\n    def forward(self, x):\n        return {body}\n"
    )


_ENC = """
class EncoderLayer(EncoderLayer):
    def forward(self, x, src_mask=None):
        def attend(y):
            return {attend}

        if self.norm_first:
            {pre}
        {post}
"""
_ENC_DEFAULTS = dict(
    attend="self.dropout(self.self_attn(y, y, y, src_mask)[0])",
    pre="x = x + attend(self.norm1(x))\n"
    "            return x + self.dropout(self.ffn(self.norm2(x)))",
    post="x = self.norm1(x + attend(x))\n        return self.norm2(x + self.dropout(self.ffn(x)))",
)


_enc = templated("encoder_layer_tests", _ENC, _ENC_DEFAULTS)


_DEC = """
class DecoderLayer(DecoderLayer):
    def forward(self, x, memory, tgt_mask=None, memory_mask=None):
        def masked_self(y):
            return self.dropout(self.self_attn(y, y, y, {tgt})[0])

        def cross(y):
            return self.dropout({cross})

        if self.norm_first:
            x = x + masked_self(self.norm1(x))
            x = x + cross(self.norm2(x))
            return x + self.dropout(self.ffn(self.norm3(x)))
        {post}
"""
_DEC_DEFAULTS = dict(
    tgt="tgt_mask",
    cross="self.cross_attn(y, memory, memory, memory_mask)[0]",
    post="x = self.norm1(x + masked_self(x))\n        x = self.norm2(x + cross(x))\n"
    "        return self.norm3(x + self.dropout(self.ffn(x)))",
)


_dec = templated("decoder_layer_tests", _DEC, _DEC_DEFAULTS)


_MODEL = """
class Transformer(Transformer):
    def __init__(self, src_vocab, tgt_vocab, d_model, num_heads, num_layers, d_ff,
                 dropout=0.1, norm_first=False, max_len=512):
        super().__init__(src_vocab, tgt_vocab, d_model, num_heads, num_layers, d_ff, dropout,
                         norm_first, max_len)
        {init}

    def encode(self, src, src_lens):
        B, S = src.shape
        mask = padding_mask(src_lens, S)
        x = {src_in}
        for layer in self.encoder_layers:
            x = layer(x, {enc_mask})
        return self.encoder_norm(x), torch.zeros(B, 0, dtype=torch.long), mask

    def decode(self, tgt_in, memory, mask):
        T = tgt_in.shape[1]
        y = {tgt_in}
        future = {future}
        for layer in self.decoder_layers:
            y = layer(y, memory, future, {mem_mask})
        return self.decoder_norm(y)
"""
_MODEL_DEFAULTS = dict(
    init="pass",
    src_in="self.positions(self.src_embed(src))",
    enc_mask="mask[:, None, :]",
    tgt_in="self.positions(self.tgt_embed(tgt_in))",
    future="causal_mask(T)",
    mem_mask="mask[:, None, :]",
)


_model = templated("transformer_tests", _MODEL, _MODEL_DEFAULTS)


MUTANTS = {
    "norm: over the wrong axis": _ln(dim=-2),
    "norm: eps outside the square root": _ln(
        result="(x - mean) / (torch.sqrt(var) + self.eps) * self.weight + self.bias"
    ),
    "norm: unbiased variance": _ln(unbiased=True),
    "norm: no gain and bias": _ln(result="(x - mean) / torch.sqrt(var + self.eps)"),
    "ffn: no activation": _ffn("self.linear2(self.dropout(self.linear1(x)))"),
    "ffn: activation on the wrong side": _ffn("torch.relu(self.linear2(self.linear1(x)))"),
    "ffn: dropout active in eval": _ffn(
        "self.linear2(F.dropout(torch.relu(self.linear1(x)), self.dropout.p, training=True))"
    ),
    "encoder: pre-LN and post-LN swapped": _enc(
        pre="x = self.norm1(x + attend(x))\n            return self.norm2(x + self.ffn(x))",
        post="x = x + attend(self.norm1(x))\n"
        "        return x + self.dropout(self.ffn(self.norm2(x)))",
    ),
    "encoder: residual missing": _enc(
        post="x = self.norm1(attend(x))\n        return self.norm2(self.dropout(self.ffn(x)))"
    ),
    "encoder: residual added after the norm": _enc(
        post="x = x + self.norm1(attend(x))\n"
        "        return x + self.norm2(self.dropout(self.ffn(x)))"
    ),
    "encoder: mask not passed": _enc(attend="self.dropout(self.self_attn(y, y, y)[0])"),
    "encoder: dropout active in eval": _enc(
        attend="F.dropout(self.self_attn(y, y, y, src_mask)[0], self.dropout.p, training=True)"
    ),
    "decoder: queries from the memory in cross-attention": _dec(
        cross="self.cross_attn(memory, y, y)[0]"
    ),
    "decoder: causal mask not applied": _dec(tgt="None"),
    "decoder: memory mask not applied": _dec(cross="self.cross_attn(y, memory, memory)[0]"),
    "decoder: residual missing": _dec(
        post="x = self.norm1(masked_self(x))\n        x = self.norm2(cross(x))\n"
        "        return self.norm3(self.dropout(self.ffn(x)))"
    ),
    "decoder: pre-LN in post-LN mode": _dec(
        post="x = x + masked_self(self.norm1(x))\n        x = x + cross(self.norm2(x))\n"
        "        return x + self.dropout(self.ffn(self.norm3(x)))"
    ),
    "model: one layer reused N times": _model(
        init="self.encoder_layers = nn.ModuleList([self.encoder_layers[0]] * num_layers)\n"
        "        self.decoder_layers = nn.ModuleList([self.decoder_layers[0]] * num_layers)"
    ),
    "model: no causal mask": _model(future="None"),
    "model: causal mask off by one": _model(future="torch.ones(T, T, dtype=torch.bool).tril(1)"),
    "model: memory mask not applied": _model(mem_mask="None"),
    "model: padding mask inverted": _model(enc_mask="~mask[:, None, :]"),
    "model: positional encoding not added": _model(
        src_in="self.src_embed(src)", tgt_in="self.tgt_embed(tgt_in)"
    ),
}


class TestChapter6(GradingContract):
    chapter = CHAPTER
    alternatives = ALTERNATIVES
    mutants = MUTANTS
    prelude = (
        "import torch.nn.functional as F\n"
        "from course_lib.attention import scaled_dot_product_attention\n"
        "from course_lib.multihead import merge_heads, split_heads\n"
    )
