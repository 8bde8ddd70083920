"""Real model sizes without allocating: parameter bytes, sharded bytes per device, and sweep chunks
that fit the memory budget by XLA's own analysis of the compiled program (``jax.eval_shape`` /
``ShapeDtypeStruct`` inputs only)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractMesh, NamedSharding

from steerjax import memory, sharding, sweeps
from steerjax.model import config_from_hf
from steerjax.models import transformer

# the published config.json of meta-llama/Meta-Llama-3-8B and google/gemma-2-9b (fields we read)
LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False, "hidden_act": "silu",
    "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 8192, "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_scaling": None,
    "rope_theta": 500000.0, "tie_word_embeddings": False, "vocab_size": 128256, "bos_token_id": 128000,
    "eos_token_id": 128001,
}
GEMMA2_9B = {
    "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "attention_bias": False,
    "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 3584, "intermediate_size": 14336,
    "max_position_embeddings": 8192, "num_attention_heads": 16, "num_hidden_layers": 42,
    "num_key_value_heads": 8, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
    "sliding_window": 4096, "vocab_size": 256000, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
}
# parameter counts published by Meta and Google
REAL = {"llama3-8b": (LLAMA3_8B, 8_030_261_248), "gemma2-9b": (GEMMA2_9B, 9_241_705_984)}


def abstract_params(cfg, dtype):
    """The params pytree as ``ShapeDtypeStruct`` s: the family's modules, built abstractly."""
    return transformer.abstract_params(cfg, dtype)


@pytest.mark.parametrize("name", sorted(REAL))
def test_param_bytes_of_real_configs(name):
    hf, count = REAL[name]
    cfg = config_from_hf(hf)
    params = abstract_params(cfg, jnp.bfloat16)
    n = sum(x.size for x in jax.tree.leaves(params))
    assert n == count == transformer.num_parameters(cfg)
    assert memory.param_bytes(cfg, jnp.bfloat16) == 2 * count
    assert sharding.per_device_bytes(params, cfg, None) == 2 * count  # no mesh: everything on one device


@pytest.mark.parametrize("name", sorted(REAL))
def test_sharded_param_bytes_per_device_on_a_2x4_mesh(name):
    cfg = config_from_hf(REAL[name][0])
    params = abstract_params(cfg, jnp.bfloat16)
    mesh = AbstractMesh((2, 4), ("data", "model"))
    specs = sharding.param_specs(params, cfg, mesh)
    # the arithmetic agrees with jax's own shard shapes
    expected = sum(
        2 * jnp.prod(jnp.asarray(NamedSharding(mesh, s).shard_shape(p.shape))).item()
        for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(specs, is_leaf=lambda x: x is None or
                                                                 isinstance(x, jax.sharding.PartitionSpec)))
    )
    per_device = sharding.per_device_bytes(params, cfg, mesh)
    assert per_device == expected
    total = memory.param_bytes(cfg, jnp.bfloat16)
    # every kernel and the (un)embedding are split four ways; only norm scales are replicated
    assert total / 4 < per_device < total / 4 * 1.001
    assert specs["layers"]["self_attn"]["q_proj"]["kernel"] == jax.sharding.PartitionSpec(None, None, "model")
    assert specs["layers"]["mlp"]["down_proj"]["kernel"] == jax.sharding.PartitionSpec(None, "model", None)
    assert specs["embed"]["embedding"] == jax.sharding.PartitionSpec("model", None)
    assert specs["layers"]["input_layernorm"]["scale"] == jax.sharding.PartitionSpec(None, None)


# (config, prompt bucket, completion tokens, layers, multipliers, positions, named vectors)
CHUNKS = [("llama3-8b", 256, 4, 1, 7, "completion", 1), ("llama3-8b", 128, 3, 2, 5, "all", 1),
          ("gemma2-9b", 256, 4, 1, 7, "completion", 1), ("llama3-8b", 256, 4, 1, 7, "last_prompt", 6)]


@pytest.mark.parametrize("name,tp,tc,nl,nm,positions,nv", CHUNKS)
def test_sweep_chunk_fits_the_budget_by_xla_memory_analysis(name, tp, tc, nl, nm, positions, nv):
    """The sweep's chunk size for a real model, compiled (not run): XLA's temporary buffers plus
    the chunk's inputs and outputs stay within the budget. float32: XLA on CPU upcasts bfloat16
    weights to float32 inside the program, which would count the parameters twice."""
    budget_mb = 4096
    cfg = config_from_hf(REAL[name][0])
    per_example = memory.sweep_bytes_per_example(cfg, tp, tc, nv * nl * nm * 2, positions, jnp.float32, vectors=nv)
    reserved = memory.block_bytes(cfg, jnp.float32)
    e = memory.examples_per_chunk(per_example, budget_mb, reserved=reserved)
    assert reserved + e * per_example <= budget_mb * 2**20
    assert e > 1  # the budget is not trivially tight
    S = jax.ShapeDtypeStruct
    batch = (S((e, tp), jnp.int32), S((e, tp), bool), S((e, 2, tc), jnp.int32), S((e, 2, tc), bool))
    shared = (S((nv, cfg.num_layers, cfg.hidden_size), jnp.float32), S((nl, cfg.num_layers), bool),
              S((nm,), jnp.float32))
    compiled = sweeps._score.lower(abstract_params(cfg, jnp.float32), cfg, *batch, *shared,
                                   positions=positions, operator="add").compile()
    stats = compiled.memory_analysis()
    chunk_inputs = sum(s.size * s.dtype.itemsize for s in batch + shared)
    used = stats.temp_size_in_bytes + stats.output_size_in_bytes + chunk_inputs
    assert used <= reserved + e * per_example <= budget_mb * 2**20, (used / 2**20, e, per_example / 2**20)


def test_block_bytes_is_one_layer_of_parameters():
    cfg = config_from_hf(LLAMA3_8B)
    globals_ = 2 * 128256 * 4096 + 4096  # embed, lm_head, final norm
    assert memory.block_bytes(cfg) * cfg.num_layers == 4 * (REAL["llama3-8b"][1] - globals_)


def test_examples_per_chunk_scales_with_the_data_axis():
    assert memory.examples_per_chunk(2**20, 10) == 10
    assert memory.examples_per_chunk(2**20, 10, data=4) == 40  # 10 per device
    assert memory.examples_per_chunk(2**40, 10, data=4) == 4  # at least one per device
    assert memory.examples_per_chunk(1, 10) == memory.MAX_EXAMPLES_PER_DEVICE
    assert memory.examples_per_chunk(2**20, 10, reserved=4 * 2**20) == 6
    assert memory.chunk_bytes(100, 40, data=4) == 1000


def test_longer_prompts_and_more_rows_cost_more():
    cfg = config_from_hf(LLAMA3_8B)
    base = memory.sweep_bytes_per_example(cfg, 128, 4, 14)
    assert memory.sweep_bytes_per_example(cfg, 256, 4, 14) > base
    assert memory.sweep_bytes_per_example(cfg, 128, 4, 28) > base
    assert memory.sweep_bytes_per_example(cfg, 128, 4, 14, "all") > base  # one prompt per row pair
    assert memory.sweep_bytes_per_example(cfg, 128, 4, 14, dtype=jnp.bfloat16) < base
