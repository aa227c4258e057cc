"""Chapter 5's checks: the reference and correct alternatives earn full marks, the blank
release earns nothing, and each known bug loses exactly the points of its own exercise."""

from tests.exercises import GradingContract, templated
from tools.chapters import SOURCES, load

CHAPTER = load(SOURCES / "05-positional-encoding.md")

ALTERNATIVES = {
    "a one-hot product, a loop over positions with math.sin, narrow and F.dropout": """
class TokenEmbedding(TokenEmbedding):
    def forward(self, tokens):
        weight = self.embedding.weight
        if self.embedding.padding_idx is not None:  # the PAD row: zero, and no gradient
            weight = weight.index_fill(0, torch.tensor([self.embedding.padding_idx]), 0.0)
        one_hot = F.one_hot(tokens, self.embedding.num_embeddings).to(weight.dtype)
        return one_hot @ weight * self.d_model**0.5


def sinusoidal_encoding(max_len, d_model):
    rows = []
    for p in range(max_len):
        row = []
        for i in range(d_model // 2):
            angle = p / 10000 ** (2 * i / d_model)
            row += [math.sin(angle), math.cos(angle)]
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float32)


class PositionalEncoding(PositionalEncoding):
    def __init__(self, d_model, max_len=5000, dropout=0.0):
        nn.Module.__init__(self)
        self.d_model, self.max_len = d_model, max_len
        self.register_buffer("pe", sinusoidal_encoding(max_len, d_model), persistent=True)
        self.p = dropout

    def forward(self, x):
        _check_sequence(x, self.d_model, self.max_len)
        out = x + self.pe.narrow(0, 0, x.shape[1]).unsqueeze(0)
        return F.dropout(out, self.p, training=self.training)
""",
    "complex numbers (torch.polar) and exp/log frequencies, in float64": """
def sinusoidal_encoding(max_len, d_model):
    p = torch.arange(max_len, dtype=torch.float64)[:, None]
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)
    omega = torch.exp(-math.log(10000.0) * two_i / d_model)
    z = torch.polar(torch.ones(max_len, d_model // 2, dtype=torch.float64), p * omega)
    pairs = torch.view_as_real(z).flip(-1)  # (cos, sin) -> (sin, cos)
    return pairs.reshape(max_len, d_model).float()


class TokenEmbedding(TokenEmbedding):
    def forward(self, tokens):
        return F.embedding(tokens, self.embedding.weight, self.embedding.padding_idx) * math.sqrt(
            self.d_model
        )
""",
}

_PE = """
class PositionalEncoding(PositionalEncoding):
    def __init__(self, d_model, max_len=5000, dropout=0.0):
        nn.Module.__init__(self)
        self.d_model, self.max_len = d_model, max_len
        {store}
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        L = x.shape[1]
        {body}
"""
_PE_DEFAULTS = dict(
    store='self.register_buffer("pe", sinusoidal_encoding(max_len, d_model))',
    body="return self.dropout(x + self.pe[:L])",
)


_pe = templated("positional_encoding_tests", _PE, _PE_DEFAULTS)


_TABLE = """
def sinusoidal_encoding(max_len, d_model):
    p = torch.arange({first}, {first} + max_len, dtype=torch.float64)[:, None]
    i = torch.arange(d_model // 2, dtype=torch.float64)
    angles = {angles}
    return {layout}.float()
"""
_TABLE_DEFAULTS = dict(
    first=0,
    angles="p / 10000 ** (2 * i / d_model)",
    layout="torch.stack([angles.sin(), angles.cos()], -1).flatten(-2)",
)


_table = templated("sinusoidal_encoding_tests", _TABLE, _TABLE_DEFAULTS)


def _embed(body: str) -> tuple[str, str]:
    return "token_embedding_tests", (
        f"class TokenEmbedding(TokenEmbedding):\n    def forward(self, tokens):\n        {body}\n"
    )


MUTANTS = {
    "embedding: not scaled": _embed("return self.embedding(tokens)"),
    "embedding: divided by sqrt(D)": _embed("return self.embedding(tokens) / self.d_model**0.5"),
    "embedding: scaled by D": _embed("return self.embedding(tokens) * self.d_model"),
    "embedding: tokens modified in place": _embed(
        "flipped = tokens.flip(1)\n        tokens.copy_(flipped)\n"
        "        return self.embedding(flipped.flip(1)) * self.d_model**0.5"
    ),
    "table: sin and cos concatenated": _table(layout="torch.cat([angles.sin(), angles.cos()], -1)"),
    "table: sin and cos swapped": _table(
        layout="torch.stack([angles.cos(), angles.sin()], -1).flatten(-2)"
    ),
    "table: exponent i/D": _table(angles="p / 10000 ** (i / d_model)"),
    "table: exponent (2i+1)/D": _table(angles="p / 10000 ** ((2 * i + 1) / d_model)"),
    "table: base 1000": _table(angles="p / 1000 ** (2 * i / d_model)"),
    "table: 10000 on the wrong side": _table(angles="p * 10000 ** (2 * i / d_model)"),
    "table: positions from 1": _table(first=1),
    "pe: a trainable parameter": _pe(
        store="self.pe = nn.Parameter(sinusoidal_encoding(max_len, d_model))"
    ),
    "pe: a plain attribute": _pe(store="self.pe = sinusoidal_encoding(max_len, d_model)"),
    "pe: added with the batch length": _pe(body="return self.dropout(x + self.pe[: x.shape[0]])"),
    "pe: broadcast over the wrong axis": _pe(
        body="return self.dropout((x.transpose(0, 1) + self.pe[:L, None]))"
    ),
    "pe: rows from position 1": _pe(body="return self.dropout(x + self.pe[1 : L + 1])"),
    "pe: dropout active in eval": _pe(
        body="return F.dropout(x + self.pe[:L], self.dropout.p, training=True)"
    ),
    "pe: no dropout": _pe(body="return x + self.pe[:L]"),
    "pe: input modified in place": _pe(body="x += self.pe[:L]\n        return self.dropout(x)"),
    "pe: own table instead of the given one": _pe(
        store='self.register_buffer("pe", torch.zeros(max_len, d_model))'
    ),
}


class TestChapter5(GradingContract):
    chapter = CHAPTER
    alternatives = ALTERNATIVES
    mutants = MUTANTS
    prelude = "import math\nimport torch.nn.functional as F\n"
