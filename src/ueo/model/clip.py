"""Load a CLIP through open_clip: a model name with a tag, a checkpoint file, ``hf-hub:`` or ``local-dir:``.

The two tiny configurations shipped in ``model_configs/`` (``ueo-tiny-vit``: ViT with LayerNorm,
``ueo-tiny-rn``: ModifiedResNet with BatchNorm) build through exactly the same open_clip code paths
as ``ViT-B-16`` and ``RN50``; tests and CPU benchmarks use them with random weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import torch
from huggingface_hub import constants

from ..errors import ConfigError, ModelUnavailableError, WeightsUnavailableError
from ..files import file_digest
from ..views import ViewSpec

CONFIG_DIR = Path(__file__).parents[1] / "model_configs"
WEIGHTS_DIR = Path(__file__).parents[1] / "weights"
open_clip.add_model_config(CONFIG_DIR)
# Weights that ship inside the package: (model, tag) -> file. Made by scripts/pretrain_toy_clip.py.
SHIPPED_WEIGHTS = {("ueo-toy-rn", "toyworld"): WEIGHTS_DIR / "ueo-toy-rn-toyworld.safetensors"}


@dataclass
class ClipBundle:
    """A CLIP model with what is needed to use it.

    model: the open_clip ``CLIP`` module (fp32, on ``device``), in eval mode.
    tokenizer: open_clip tokenizer, ``tokenizer(list_of_str) -> LongTensor [N, context_length]``.
    name / pretrained: what was asked for, recorded in adapted states so that they can be matched later.
    identity: what the weights are (a seed, a tag, a file's size and digest), recorded and checked likewise.
    """

    model: torch.nn.Module
    tokenizer: Callable
    name: str
    pretrained: str | None = None
    identity: dict | None = None  # what rebuilds the weights (``weights_identity``), recorded in adapted states

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def views(self) -> ViewSpec:
        """The train and eval views of this model (input size, normalisation, crop)."""
        return ViewSpec.of(self.model)

    @property
    def image_size(self) -> int:
        return self.views.size

    @property
    def train_transform(self) -> Callable:
        """PIL image -> normalised tensor: the reference's train view (RandomResizedCrop 0.5-1 + flip)."""
        return self.views.train_transform()

    @property
    def eval_transform(self) -> Callable:
        """PIL image -> normalised tensor: the model's own eval preprocessing."""
        return self.views.eval_transform()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300] if text else 'no message'}"


def weights_advice(model: str, weights_file: str, python: bool = True) -> str:
    """How to supply the weights of ``model`` offline, in Python or command-line form."""
    name = model.split(":")[-1]
    if model.startswith("hf-hub:"):  # a whole repository: config + weights
        folder = "load_clip('local-dir:/path/to/folder')" if python else "--model local-dir:/path/to/folder"
        return (
            "Without network access, download the repository's open_clip_config.json and weights on a machine "
            f"that has it, copy the folder here and use {folder}, or copy the Hugging Face cache "
            "(~/.cache/huggingface) from a machine that downloaded it and set HF_HUB_OFFLINE=1."
        )
    if python:
        give = f"load_clip({name!r}, pretrained='/path/to/{weights_file}')"
        folder = "load_clip('local-dir:/path/to/folder')"
    else:
        give = f"--model {name} --pretrained /path/to/{weights_file}"
        folder = "--model local-dir:/path/to/folder"
    return (
        "Without network access, download the weights on a machine that has it, copy them here, and pass the file:\n"
        f"  {give}\n"
        f"or an open_clip folder (open_clip_config.json + weights): {folder}\n"
        "or copy the Hugging Face cache (~/.cache/huggingface) from a machine that downloaded them, and set "
        "HF_HUB_OFFLINE=1."
    )


def _weights_source(model: str, pretrained: str | None) -> tuple[str, str, str | None]:
    """(what the weights are, their file name, the host they come from) of a tag or an hf-hub: model."""

    hub_host = urlparse(constants.ENDPOINT).hostname
    if model.startswith("hf-hub:"):
        repo = model[len("hf-hub:") :]
        return f"the Hugging Face repository {repo}", "open_clip_model.safetensors", hub_host
    cfg = open_clip.get_pretrained_cfg(model.replace("/", "-"), pretrained) or {}
    if cfg.get("hf_hub"):  # "org/repo/" (open_clip's default file name) or "org/repo/file"
        repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        return f"the file {filename} of the Hugging Face repository {repo}", filename, hub_host
    if cfg.get("url"):
        return cfg["url"], os.path.basename(urlparse(cfg["url"]).path), urlparse(cfg["url"]).hostname
    return "the weights", "open_clip_model.safetensors", None


def _reachable(host: str | None, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host``:443 opens within ``timeout`` seconds."""

    if not host:
        return True
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """Hugging Face Hub in offline mode (the cache only, no retries) while ``offline``."""

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = previous or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _unknown_weights(model: str, pretrained: str) -> str:
    if os.sep in pretrained or "/" in pretrained or os.path.splitext(pretrained)[1]:
        return f"pretrained={pretrained!r}: no such file."
    known = list(open_clip.list_pretrained_tags_by_model(model.replace("/", "-")))
    known += [tag for (name, tag) in SHIPPED_WEIGHTS if name == model]
    listed = ", ".join(known) if known else "none (pass a checkpoint file)"
    return f"pretrained={pretrained!r} is neither a file nor a known tag for {model!r}. Known tags: {listed}."


def _is_local_file(pretrained: str | None) -> bool:
    return pretrained is not None and bool(pretrained) and os.path.isfile(pretrained)


def _missing_package(model: str, error: ImportError) -> ModelUnavailableError:
    package = getattr(error, "name", None) or "a package"
    return ModelUnavailableError(
        f"{model!r} needs the Python package {package!r}, which is not installed ({_first_line(error)}). "
        f"Install it (pip install {package}) or choose a model built from open_clip's own towers."
    )


def _model_config(model: str) -> dict:
    """open_clip's configuration of a model name or a local-dir: folder ({} when it is not at hand here:
    hf-hub: configurations are downloaded when the model is built)."""
    schema, identifier = open_clip.factory.parse_model_name(model)
    if schema is None:
        return open_clip.get_model_config(model) or {}
    if schema == "local-dir":
        try:
            return json.loads((Path(identifier) / "open_clip_config.json").read_text()).get("model_cfg", {})
        except (OSError, ValueError, AttributeError):
            return {}  # (open_clip says what is missing when it builds)
    return {}


def _check_text_tower(model: str, cfg: dict) -> None:
    """Refuse, before anything is built, a text tower ueo cannot learn prompts on (a Hugging Face text
    model), and say when a Hugging Face tokenizer needs the ``transformers`` package."""

    text = cfg.get("text_cfg", {})
    if text.get("hf_model_name"):
        raise ModelUnavailableError(
            f"{model!r} uses the Hugging Face text model {text['hf_model_name']!r} as its text tower; ueo's prompt "
            "learning needs open_clip's own text transformer. Choose a model built from open_clip's towers."
        )
    if text.get("hf_tokenizer_name") and importlib.util.find_spec("transformers") is None:
        raise ModelUnavailableError(
            f"{model!r} uses the Hugging Face tokenizer {text['hf_tokenizer_name']!r}, which needs the Python "
            "package 'transformers' (not installed here): pip install transformers. Offline, also copy the "
            "Hugging Face cache (~/.cache/huggingface) from a machine that has downloaded it, and set HF_HUB_OFFLINE=1."
        )


def _tokenizer_failure(model: str, cfg: dict, offline: bool, error: Exception) -> WeightsUnavailableError:
    name = cfg.get("text_cfg", {}).get("hf_tokenizer_name", "its tokenizer")
    cause = "no network, and it is not in the Hugging Face cache" if offline else _first_line(error)
    return WeightsUnavailableError(
        f"Could not obtain the tokenizer {name!r} of {model!r} from the Hugging Face hub: {cause}. Without network "
        "access, copy the Hugging Face cache (~/.cache/huggingface) from a machine that has loaded this model once "
        "and set HF_HUB_OFFLINE=1, or put the tokenizer's files beside open_clip_config.json and the weights in "
        "one folder and load it as 'local-dir:/path/to/folder'."
    )


def file_identity(path) -> dict:
    """A file's name, size, SHA-256 of the whole file (read once per state of the file: ``files.file_digest``
    remembers it) and, for adapted states saved by earlier versions, the SHA-256 of its size, first and last
    MiB."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read(1 << 20))
    return {
        "file": os.path.basename(path),
        "bytes": size,
        "sha256": file_digest(path),
        "sha256_ends": digest.hexdigest()[:16],
    }


def weights_identity(model: str, pretrained: str | None, seed: int, checkpoint: str | None) -> dict:
    """What rebuilds a bundle's weights: {"random": seed}, {"tag": tag}, {"file": ..., "bytes": ...,
    "sha256_ends": ...} for a checkpoint file, {"folder": [file identities]} for local-dir: (its config
    and weights), {"hub": repo} for hf-hub:."""
    schema, identifier = open_clip.factory.parse_model_name(model)
    if schema == "local-dir":
        folder = Path(identifier)
        files = [folder / "open_clip_config.json"] + sorted(
            p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pth", ".pt")
        )
        return {"folder": [file_identity(p) for p in files if p.is_file()]}
    if schema == "hf-hub":
        return {"hub": identifier}
    if pretrained is None:
        return {"random": int(seed)}
    if checkpoint is not None and _is_local_file(checkpoint) and (model, pretrained) not in SHIPPED_WEIGHTS:
        return file_identity(checkpoint)
    return {"tag": pretrained}


def same_weights(a: dict, b: dict) -> bool:
    """Whether two weights identities are the same weights (a file's name does not count: copies and
    renamed files are the same weights). Files are compared by their whole digest when both identities have
    it (an identity recorded by an earlier version has only the digest of the file's ends)."""
    if "folder" in a or "folder" in b:
        files_a, files_b = a.get("folder", []), b.get("folder", [])
        return len(files_a) == len(files_b) and all(same_weights(x, y) for x, y in zip(files_a, files_b))
    ignored = ("file", "sha256") if "sha256" not in a or "sha256" not in b else ("file", "sha256_ends")
    return {k: v for k, v in a.items() if k not in ignored} == {k: v for k, v in b.items() if k not in ignored}


def describe_weights(identity: dict | None) -> str:
    """The identity of weights in words, for messages."""
    if not identity:
        return "weights of unrecorded identity"
    if "random" in identity:
        return f"random weights (seed {identity['random']})"
    if "tag" in identity:
        return f"the weights tagged {identity['tag']!r}"
    if "hub" in identity:
        return f"the Hugging Face repository {identity['hub']}"
    if "folder" in identity:
        return "the folder holding " + ", ".join(describe_weights(f) for f in identity["folder"])
    whole = f", SHA-256 {str(identity['sha256'])[:16]}" if identity.get("sha256") else ""
    return f"the file {identity.get('file')} ({identity.get('bytes', 0):,} bytes, digest {identity.get('sha256_ends')}{whole})"


def load_clip(
    model: str, pretrained: str | None = None, device: str | torch.device | None = None, seed: int = 0
) -> ClipBundle:
    """Build a CLIP through open_clip and return a :class:`ClipBundle`.

    model: an open_clip name ("ViT-B-16", "RN50", "ueo-tiny-vit", ...), "hf-hub:org/repo" or
        "local-dir:/path" (for the last two, ``pretrained`` is ignored, as in open_clip).
    pretrained: a tag ("openai", "laion2b_s34b_b88k", ...), a checkpoint file, or None for random weights.
    device: where the model lives; default CUDA when available, else CPU.
    seed: the random initialisation (used when ``pretrained`` is None): the same seed gives the same
        weights, on every device and every rank.

    Raises WeightsUnavailableError with instructions when weights cannot be downloaded or read, and
    ModelUnavailableError when the model needs a package that is not installed.
    """
    device = (
        torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    schema, _ = open_clip.factory.parse_model_name(model)
    shipped = SHIPPED_WEIGHTS.get((model, pretrained)) if pretrained is not None else None
    checkpoint = str(shipped) if shipped is not None else pretrained
    if schema is None and model.replace("/", "-") not in open_clip.list_models():
        raise ConfigError(
            f"Unknown model {model!r}. Use an open_clip name (see open_clip.list_models()), "
            "'hf-hub:org/repo' or 'local-dir:/path'."
        )
    is_tag = schema is None and bool(checkpoint) and not _is_local_file(checkpoint)
    if is_tag and pretrained is not None and not open_clip.get_pretrained_cfg(model.replace("/", "-"), pretrained):
        raise WeightsUnavailableError(_unknown_weights(model, pretrained))
    cfg = _model_config(model)
    _check_text_tower(model, cfg)
    hub_tokenizer = bool(cfg.get("text_cfg", {}).get("hf_tokenizer_name")) and schema != "local-dir"
    offline, host = False, None
    if is_tag or schema == "hf-hub":  # a download may be needed: fail fast when the network is not there
        description, weights_file, host = _weights_source(model, pretrained)
    if is_tag or schema == "hf-hub" or hub_tokenizer:
        offline = not _reachable(host or urlparse(constants.ENDPOINT).hostname)
    try:
        with torch.random.fork_rng(devices=[]), _hub_offline(offline):
            torch.manual_seed(seed)  # random weights are a function of the seed alone
            clip_model = open_clip.create_model(model, pretrained=checkpoint if schema is None else None, device="cpu")
            try:
                tokenizer = open_clip.get_tokenizer(model)
            except ImportError:
                raise
            except Exception as error:
                if not hub_tokenizer:
                    raise
                raise _tokenizer_failure(model, cfg, offline, error) from error
    except ImportError as error:
        raise _missing_package(model, error) from error
    except WeightsUnavailableError:
        raise
    except Exception as error:
        if schema is None and _is_local_file(checkpoint):
            raise WeightsUnavailableError(
                f"Could not load the checkpoint file {checkpoint} into {model!r} ({_first_line(error)}). "
                "Is it an open_clip checkpoint (safetensors, or a PyTorch state dict) of this architecture?"
            ) from error
        if schema == "local-dir":
            raise WeightsUnavailableError(
                f"Could not build {model!r} from its folder ({_first_line(error)}); it needs "
                "open_clip_config.json and the weights file."
            ) from error
        if not (is_tag or schema == "hf-hub"):  # nothing to download: not the user's doing
            raise
        what = f"{model!r} with pretrained={pretrained!r}" if pretrained else repr(model)
        cause = (
            f"no network ({host} cannot be reached) and they are not in the Hugging Face cache"
            if offline
            else _first_line(error)
        )
        head = f"Could not obtain the weights of {what}, {description}: {cause}.\n"
        failure = WeightsUnavailableError(head + weights_advice(model, weights_file))
        failure.cli_advice = head + weights_advice(model, weights_file, python=False)
        raise failure from error
    clip_model.to(device).eval()
    identity = weights_identity(model, pretrained, seed, checkpoint)
    bundle = ClipBundle(model=clip_model, tokenizer=tokenizer, name=model, pretrained=pretrained, identity=identity)
    bundle.views  # noqa: B018 (its preprocessing must be one ueo's views can make: refused here, not later)
    return bundle
