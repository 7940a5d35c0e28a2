"""CoOp prompt learning on open_clip's own text tower, whatever its layout and tokenizer.

Prompts are "[start] [V1]..[Vm] {name}. [end]": m context vectors shared by all classes, initialised from
the word embeddings of ``init`` ("a photo of a", m = 4), class name last with '_' replaced by ' '. Only
the context learns; the text tower stays frozen.

The layout comes from the tokenizer's own output, not from CLIP's conventions: the tokens before the
content (a start token or none), the m tokens of ``init``, and each prompt's length (up to its last
token that is not padding). The text tower is open_clip's text transformer, found at the model's top
level (CLIP) or as ``model.text`` (SigLIP, EVA, MobileCLIP, CoCa, PE, ViTamin, ...); its own masks,
pooling ("argmax", "eos", "last", "first", CoCa's appended class token) and projection are used.

Speed without changing the result: when the attention mask is causal and the feature is read at or
before each prompt's last token, no token after the longest prompt influences anything read, and all
prompts are cut to that length (77 -> ~10 tokens). Otherwise the full context is encoded.
Classes are encoded in chunks to bound memory when K is large.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.transformer import TextTransformer, text_global_pool
from torch import nn

from ..config import DEFAULT_INIT
from ..data import check_class_names
from ..errors import ConfigError, DataError, ModelUnavailableError


def prompt_text(name: str, init: str = DEFAULT_INIT) -> str:
    """The zero-shot prompt of a class: "a photo of a {name}." with '_' -> ' '."""
    return f"{init} {name.replace('_', ' ')}."


@dataclass
class TextTower:
    """open_clip's text transformer of a model: the module that holds its token embedding, positional
    embedding, transformer, final norm and projection, and how it pools."""

    model: nn.Module  # the whole CLIP (its encode_text is the reference)
    module: nn.Module  # the model itself (CLIP layout) or model.text (TextTransformer layout)
    pool_type: str
    eos_id: int | None

    @classmethod
    def of(cls, model: nn.Module) -> TextTower:
        if hasattr(model, "token_embedding"):
            return cls(model, model, model.text_pool_type, getattr(model, "text_eos_id", None))
        text = getattr(model, "text", None)
        if isinstance(text, TextTransformer):
            return cls(model, text, text.pool_type, getattr(text, "eos_id", None))
        raise ModelUnavailableError(
            f"This model's text tower is {type(text).__name__} (a Hugging Face text model); ueo's prompt learning "
            "needs open_clip's own text transformer. Choose a model built from open_clip's towers."
        )

    @property
    def truncatable(self) -> bool:
        """Whether cutting the prompts after their longest one changes nothing: a causal mask, no appended
        class token, and a feature read at or before each prompt's last token."""
        causal = getattr(self.module, "attn_mask", None) is not None
        return causal and getattr(self.module, "cls_emb", None) is None and self.pool_type in ("argmax", "eos", "first")

    @property
    def context_length(self) -> int:
        return int(getattr(self.module, "context_length", self.module.positional_embedding.shape[0]))

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.module.token_embedding(tokens)

    def encode(self, embedded: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """L2-normalised features [N, D] of token embeddings [N, L, W] whose token ids are ``tokens``
        [N, L] (the ids decide the pooling position and the padding mask). Equals the model's own
        ``encode_text`` on the same ids when ``embedded`` is their embedding."""
        if self.truncatable:
            return F.normalize(self._causal_forward(embedded, tokens).float(), dim=-1)
        # The model's own forward, with its token embedding's output replaced by ``embedded``.
        with _replaced_output(self.module.token_embedding, embedded):
            features = self.model.encode_text(tokens, normalize=False)
        return F.normalize(features.float(), dim=-1)

    def _causal_forward(self, embedded: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """open_clip's text forward on the first L tokens: exact for a causal mask (sliced to L x L)."""
        tower = self.module
        cast = tower.transformer.get_cast_dtype()
        length = embedded.shape[1]
        x = embedded.to(cast) + tower.positional_embedding[:length].to(cast)
        x = tower.ln_final(tower.transformer(x, attn_mask=tower.attn_mask[:length, :length]))
        x = text_global_pool(x, tokens, self.pool_type, eos_token_id=self.eos_id)
        projection = tower.text_projection
        if projection is not None:
            x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
        return x


@contextlib.contextmanager
def _replaced_output(module: nn.Module, value: torch.Tensor):
    handle = module.register_forward_hook(lambda mod, args, output: value.to(output.dtype))
    try:
        yield
    finally:
        handle.remove()


def _common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    differs = (a != b).nonzero()
    return int(differs[0]) if len(differs) else len(a)


def _length(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Per row, the index after the last token that is not padding."""
    real = tokens != pad_id
    positions = torch.arange(1, tokens.shape[-1] + 1, device=tokens.device)
    return (real * positions).max(dim=-1).values


@dataclass
class PromptLayout:
    """Where things are in the tokenized prompts: ``tokens`` [K, L]; the context is tokens[:, start:start + m];
    ``lengths`` [K]: each prompt's length up to its last non-padding token."""

    tokens: torch.Tensor
    start: int
    n_ctx: int
    lengths: torch.Tensor

    @classmethod
    def of(cls, tokenizer, class_names: Sequence[str], init: str) -> PromptLayout:
        empty, init_tokens = tokenizer([""])[0], tokenizer([init])[0]
        tokens = tokenizer([prompt_text(n, init) for n in class_names])
        pad_id = int(empty[-1])  # an empty text is padding at its end, whatever the tokenizer
        start = _common_prefix(empty, init_tokens)  # special tokens before the content (0 or 1)
        end_specials = int(_length(empty[None], pad_id)[0]) - start
        n_ctx = int(_length(init_tokens[None], pad_id)[0]) - start - end_specials
        if n_ctx < 1:
            raise ConfigError(f"init={init!r} gives no context tokens.")
        lengths = _length(tokens, pad_id)
        context_length = tokens.shape[1]
        if int(lengths.max()) >= context_length:  # the tokenizer may have cut it: the name did not fit
            longest = class_names[int(lengths.argmax())]
            raise DataError(
                f"The prompt for class {longest!r} does not fit the text context of {context_length} tokens; "
                "shorten the class name."
            )
        shared = (tokens[:, start : start + n_ctx] == init_tokens[start : start + n_ctx]).all(dim=-1)
        if not bool(shared.all()):
            name = class_names[int((~shared).nonzero()[0])]
            raise DataError(f"The class name {name!r} changes how {init!r} is tokenized in its prompt; rename it.")
        return cls(tokens, start, n_ctx, lengths)


class PromptLearner(nn.Module):
    """Learnable CoOp context + frozen open_clip text tower.

    bundle: a ClipBundle (``.model`` an open_clip model, ``.tokenizer`` its tokenizer).
    class_names: the K known classes, in label order.
    init: words whose embeddings initialise the context; m = number of their tokens.
    chunk_size: classes encoded per text-transformer call.

    ``text_features()`` -> [K, D] L2-normalised; differentiable w.r.t. ``ctx`` only.
    """

    def __init__(self, bundle, class_names: Sequence[str], init: str = DEFAULT_INIT, chunk_size: int = 512):
        super().__init__()
        if not class_names:
            raise DataError("class_names is empty: give at least one known class.")
        self.tower = TextTower.of(bundle.model)
        self.class_names = check_class_names(class_names)
        self.init = init
        self.chunk_size = int(chunk_size)
        layout = PromptLayout.of(bundle.tokenizer, self.class_names, init)
        device = self.tower.module.token_embedding.weight.device
        length = int(layout.lengths.max()) if self.tower.truncatable else layout.tokens.shape[1]
        self.n_ctx, start = layout.n_ctx, layout.start
        self.register_buffer("tokens", layout.tokens[:, :length].clone().to(device), persistent=False)
        with torch.no_grad():
            embedded = self.tower.embed(self.tokens)  # [K, L, W]
        self.register_buffer("token_prefix", embedded[:, :start].clone(), persistent=False)  # start token(s)
        self.register_buffer("token_suffix", embedded[:, start + self.n_ctx :].clone(), persistent=False)  # name . end
        self.ctx = nn.Parameter(embedded[0, start : start + self.n_ctx].clone().float())  # [m, W]

    def text_features(self) -> torch.Tensor:
        """[K, D] L2-normalised text features of all prompts with the current context. An ensemble of contexts
        ([N, m, W]) gives the mean of each context's normalised features: cosines with them are the mean of
        each context's cosines (the ensemble's averaged logits)."""
        if self.ctx.dim() == 3:
            return torch.stack([self.features_of(ctx) for ctx in self.ctx]).mean(dim=0)
        return self.features_of(self.ctx)

    def features_of(self, context: torch.Tensor) -> torch.Tensor:
        parts = []
        for first in range(0, len(self.tokens), self.chunk_size):
            last = first + self.chunk_size
            prefix, suffix = self.token_prefix[first:last], self.token_suffix[first:last]
            ctx = context.unsqueeze(0).expand(len(prefix), -1, -1).to(prefix.dtype)
            parts.append(self.tower.encode(torch.cat([prefix, ctx, suffix], dim=1), self.tokens[first:last]))
        return torch.cat(parts)

    def forward(self) -> torch.Tensor:
        return self.text_features()


def encode_tokens(model: nn.Module, tokens: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Normalised text features of tokenized texts [N, L] (cut after the longest text where that is exact)."""
    tower = TextTower.of(model)
    if tower.truncatable:
        tokens = tokens[:, : int(_length(tokens, pad_id).max())]
    return tower.encode(tower.embed(tokens), tokens)
