"""CoOp prompt learning on open_clip's own text tower.

Prompts are "<sot> [V1]..[Vm] {name}. <eot>": m context vectors shared by all classes, initialised from
the word embeddings of ``init`` ("a photo of a", m = 4), class name last with '_' replaced by ' '.
Only the context learns; the text tower stays frozen.

Speed without changing the result: the text transformer's mask is causal, so every token
after the longest prompt's end token influences nothing that is read; all prompts are cut to that
length (77 -> ~10 tokens). Classes are encoded in chunks to bound memory when K is large.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from torch import nn

from .config import DEFAULT_INIT
from .errors import ConfigError, DataError


def prompt_text(name: str, init: str = DEFAULT_INIT) -> str:
    """The zero-shot prompt of a class: "a photo of a {name}." with '_' -> ' '."""
    return f"{init} {name.replace('_', ' ')}."


def encode_embedded_text(model: nn.Module, embedded: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's text tower on token embeddings [N, L, W] (L <= context length; ``tokens`` [N, L] give
    the <eot> positions) -> L2-normalised features [N, D]. Equals ``encode_text`` for any L that keeps
    every <eot>, because the attention mask is causal."""
    cast = model.transformer.get_cast_dtype()
    length = embedded.shape[1]
    x = embedded.to(cast) + model.positional_embedding[:length].to(cast)
    mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
    x = model.ln_final(model.transformer(x, attn_mask=mask))
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, nn.Linear) else x @ model.text_projection
    return F.normalize(x.float(), dim=-1)


def encode_tokens(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Normalised text features of tokenized texts [N, 77], cut after the longest <eot> (exact, faster)."""
    tokens = tokens[:, : int(tokens.argmax(dim=-1).max()) + 1]
    return encode_embedded_text(model, model.token_embedding(tokens), tokens)


class PromptLearner(nn.Module):
    """Learnable CoOp context + frozen open_clip text tower.

    bundle: a ClipBundle (``.model`` is an open_clip CLIP, ``.tokenizer`` its tokenizer).
    class_names: the K known classes, in label order.
    init: words whose embeddings initialise the context; m = number of their tokens.
    chunk_size: classes encoded per text-transformer call.

    ``text_features()`` -> [K, D] L2-normalised; differentiable w.r.t. ``ctx`` only.
    """

    def __init__(self, bundle, class_names: Sequence[str], init: str = DEFAULT_INIT, chunk_size: int = 512):
        super().__init__()
        if not class_names:
            raise DataError("class_names is empty: give at least one known class.")
        model = bundle.model
        self.class_names = list(class_names)
        self.init = init
        self.chunk_size = int(chunk_size)
        self._model = [model]  # a list: the frozen CLIP must not be registered as a sub-module
        device = model.token_embedding.weight.device

        n_ctx = len(bundle.tokenizer([init])[0].nonzero()) - 2  # minus <sot> and <eot>
        if n_ctx < 1:
            raise ConfigError(f"init={init!r} gives no context tokens.")
        tokens = bundle.tokenizer([prompt_text(n, init) for n in self.class_names]).to(device)
        end = tokens.argmax(dim=-1)  # <eot> has the largest id (open_clip's 'argmax' pooling)
        context_length = tokens.shape[1]
        if int(end.max()) >= context_length - 1:  # the tokenizer cut it: the name did not fit
            longest = self.class_names[int(end.argmax())]
            raise DataError(
                f"The prompt for class {longest!r} does not fit the text context of "
                f"{context_length} tokens; shorten the class name."
            )
        self.n_ctx = n_ctx
        length = int(end.max()) + 1
        self.register_buffer("tokens", tokens[:, :length].clone(), persistent=False)
        with torch.no_grad():
            embedded = model.token_embedding(self.tokens)  # [K, L, W]
        self.register_buffer("token_prefix", embedded[:, :1].clone(), persistent=False)  # <sot>
        self.register_buffer("token_suffix", embedded[:, 1 + n_ctx :].clone(), persistent=False)  # name . <eot>
        self.ctx = nn.Parameter(embedded[0, 1 : 1 + n_ctx].clone().float())  # [m, W]

    @property
    def clip(self) -> nn.Module:
        return self._model[0]

    def text_features(self) -> torch.Tensor:
        """[K, D] L2-normalised text features of all prompts with the current context."""
        parts = []
        for start in range(0, len(self.tokens), self.chunk_size):
            stop = start + self.chunk_size
            prefix, suffix = self.token_prefix[start:stop], self.token_suffix[start:stop]
            ctx = self.ctx.unsqueeze(0).expand(len(prefix), -1, -1).to(prefix.dtype)
            embedded = torch.cat([prefix, ctx, suffix], dim=1)
            parts.append(encode_embedded_text(self.clip, embedded, self.tokens[start:stop]))
        return torch.cat(parts)

    def forward(self) -> torch.Tensor:
        return self.text_features()
