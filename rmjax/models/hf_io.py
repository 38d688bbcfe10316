"""Hugging Face causal-LM checkpoints (config.json + safetensors) in and out, without torch.

Supported: ``llama`` and ``qwen2`` (our "llama" family) and ``gpt2``. Torch linear
weights are stored [out, in]; ours keep the input axis first and split heads out
(o [H, D, E], down [F, E], lm_head [E, V]). Our query/key/value and gate/up
projections are fused; ``rmjax.models.layout`` alone knows that order. GPT-2's Conv1D
weights are already [in, out], with q, k and v side by side in ``c_attn``.

Loading builds the model abstractly (``nnx.eval_shape``) and fills its state from the
files, so no random initialisation of the backbone happens. Parameters a causal-LM
checkpoint cannot hold (reward and value heads requested by overrides) are initialised
as ``Transformer`` would with ``nnx.Rngs(seed)``, under jit so the rest is never built.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy
from flax import nnx

from rmjax.models import layout
from rmjax.models.config import ModelConfig
from rmjax.models.transformer import Transformer

Path = tuple  # a state path such as ("blocks", 0, "attn", "qkv")


class Rule(NamedTuple):
  """Some HF tensors <-> some of our parameters (NumPy arrays both ways).

  ``load(*hf_arrays) -> tuple of ours``; ``save(*our_arrays) -> tuple of HF arrays``,
  both in the order of ``hf`` (name -> expected HF shape) and ``ours``.
  """
  hf: dict[str, tuple[int, ...]]
  ours: tuple[Path, ...]
  load: Callable
  save: Callable


def _reshaped(name, hf_shape, path, our_shape):  # same element order (GPT-2 Conv1D, norms)
  return Rule({name: hf_shape}, (path,), lambda w: (w.reshape(our_shape),),
              lambda w: (w.reshape(hf_shape),))


def _linear(name, hf_shape, path, our_shape):  # torch [out, in] <-> ours [in..., out...]
  return Rule({name: hf_shape}, (path,), lambda w: (w.T.reshape(our_shape),),
              lambda w: (w.reshape(hf_shape[::-1]).T,))


def _llama_qkv(names, cfg, path, bias):
  """q/k/v_proj weights [H*D, E], [KV*D, E] x2 (biases [H*D], [KV*D] x2) <-> fused."""
  e, h, kv, d = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dim_per_head
  sizes = (h * d, kv * d, kv * d)
  shapes = [(n,) if bias else (n, e) for n in sizes]

  def load(*qkv):
    return (layout.fuse_qkv(*(x.reshape(-1, d) if bias else x.T.reshape(e, -1, d)
                              for x in qkv)),)

  def save(w):
    return tuple(x.reshape(-1) if bias else x.reshape(e, -1).T for x in layout.split_qkv(w))
  return Rule(dict(zip(names, shapes)), (path,), load, save)


def _gpt2_qkv(name, cfg, path, bias):
  """c_attn weight [E, 3E] (bias [3E]), q | k | v along the last axis <-> fused."""
  e, h, d = cfg.d_model, cfg.n_heads, cfg.dim_per_head

  def load(w):
    parts = np.split(w, 3, axis=-1)
    return (layout.fuse_qkv(*(x.reshape(*x.shape[:-1], h, d) for x in parts)),)

  def save(w):
    return (np.concatenate([x.reshape(*x.shape[:-2], -1) for x in layout.split_qkv(w)], -1),)
  return Rule({name: (3 * e,) if bias else (e, 3 * e)}, (path,), load, save)


def _gate_up(gate, up, cfg, path):
  """gate_proj, up_proj [F, E] <-> fused [E, 2, F]."""
  f, e = cfg.d_ff, cfg.d_model
  return Rule({gate: (f, e), up: (f, e)}, (path,),
              lambda g, u: (layout.fuse_gate_up(g.T, u.T),),
              lambda w: tuple(x.T for x in layout.split_gate_up(w)))


def _rules(cfg: ModelConfig) -> list[Rule]:
  """The HF names, shapes and layout transforms of every backbone / LM-head parameter."""
  e, f, v, h, d = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_heads, cfg.dim_per_head
  if cfg.family == "gpt2":
    p = "transformer."
    rules = [_reshaped(p + "wte.weight", (v, e), ("embed",), (v, e)),
             _reshaped(p + "wpe.weight", (cfg.max_seq_len, e), ("pos_embed",),
                       (cfg.max_seq_len, e))]
    norms = [(p + "ln_f", ("final_norm",))]
    for i in range(cfg.n_layers):
      a, b = f"{p}h.{i}.", ("blocks", i)
      norms += [(a + "ln_1", b + ("attn_norm",)), (a + "ln_2", b + ("mlp_norm",))]
      rules += [
          _gpt2_qkv(a + "attn.c_attn.weight", cfg, b + ("attn", "qkv"), bias=False),
          _gpt2_qkv(a + "attn.c_attn.bias", cfg, b + ("attn", "qkv_bias"), bias=True),
          _reshaped(a + "attn.c_proj.weight", (h * d, e), b + ("attn", "o"), (h, d, e)),
          _reshaped(a + "attn.c_proj.bias", (e,), b + ("attn", "o_bias"), (e,)),
          _reshaped(a + "mlp.c_fc.weight", (e, f), b + ("mlp", "up"), (e, f)),
          _reshaped(a + "mlp.c_fc.bias", (f,), b + ("mlp", "up_bias"), (f,)),
          _reshaped(a + "mlp.c_proj.weight", (f, e), b + ("mlp", "down"), (f, e)),
          _reshaped(a + "mlp.c_proj.bias", (e,), b + ("mlp", "down_bias"), (e,))]
    for hf_norm, ours in norms:
      rules += [_reshaped(f"{hf_norm}.{n}", (e,), ours + (o,), (e,))
                for n, o in (("weight", "scale"), ("bias", "bias"))]
  else:
    rules = [_reshaped("model.embed_tokens.weight", (v, e), ("embed",), (v, e)),
             _reshaped("model.norm.weight", (e,), ("final_norm", "scale"), (e,))]
    for i in range(cfg.n_layers):
      a, b = f"model.layers.{i}.", ("blocks", i)
      proj = [f"{a}self_attn.{n}_proj" for n in "qkv"]
      rules += [
          _reshaped(a + "input_layernorm.weight", (e,), b + ("attn_norm", "scale"), (e,)),
          _reshaped(a + "post_attention_layernorm.weight", (e,), b + ("mlp_norm", "scale"),
                    (e,)),
          _llama_qkv([n + ".weight" for n in proj], cfg, b + ("attn", "qkv"), bias=False),
          _linear(a + "self_attn.o_proj.weight", (e, h * d), b + ("attn", "o"), (h, d, e)),
          _gate_up(a + "mlp.gate_proj.weight", a + "mlp.up_proj.weight", cfg, b + ("mlp", "up")),
          _linear(a + "mlp.down_proj.weight", (e, f), b + ("mlp", "down"), (f, e))]
      if cfg.qkv_bias:
        rules.append(_llama_qkv([n + ".bias" for n in proj], cfg, b + ("attn", "qkv_bias"),
                                bias=True))
  if cfg.lm_head and not cfg.tie_embeddings:
    rules.append(_linear("lm_head.weight", (v, e), ("lm_head",), (e, v)))
  return rules


# --------------------------------------------------------------------------- config


def config_from_hf(hf_config: Mapping, **overrides) -> ModelConfig:
  """A ``ModelConfig`` from a config.json dict (model_type llama, qwen2 or gpt2).

  Reads the rope base from ``rope_parameters`` (transformers 5) or the older top-level
  ``rope_theta`` / ``rope_scaling``. ``overrides`` replace any field afterwards
  (e.g. ``param_dtype="bfloat16"``, ``num_reward_heads=1``).
  """
  c, kind = dict(hf_config), hf_config.get("model_type")
  unsupported = []
  if kind == "gpt2":
    e = c["n_embd"]
    act = c.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
      unsupported.append(f"activation_function={act!r} (only the tanh GELU)")
    if c.get("scale_attn_by_inverse_layer_idx") or not c.get("scale_attn_weights", True):
      unsupported.append("non-standard attention scaling")
    base = dict(family="gpt2", vocab_size=c["vocab_size"], d_model=e, n_layers=c["n_layer"],
                n_heads=c["n_head"], d_ff=c.get("n_inner") or 4 * e,
                max_seq_len=c.get("n_positions", 1024),
                norm_eps=c.get("layer_norm_epsilon", 1e-5),
                tie_embeddings=c.get("tie_word_embeddings", True))
  elif kind in ("llama", "qwen2"):
    if c.get("hidden_act", "silu") != "silu":
      unsupported.append(f"hidden_act={c['hidden_act']!r}")
    if kind == "llama" and (c.get("attention_bias") or c.get("mlp_bias")):
      unsupported.append("attention_bias/mlp_bias on a llama model (output/MLP biases)")
    if kind == "qwen2" and c.get("use_sliding_window"):
      unsupported.append("use_sliding_window=True")
    rope = dict(c.get("rope_parameters") or c.get("rope_scaling") or {})
    theta = rope.pop("rope_theta", c.get("rope_theta", 10_000.0))
    rope_type = rope.pop("rope_type", rope.pop("type", "default"))
    scaling = None
    if rope_type in ("linear", "llama3"):
      scaling = (("rope_type", rope_type),) + tuple(sorted(rope.items()))
    elif rope_type != "default":
      unsupported.append(f"rope_type={rope_type!r}")
    base = dict(family="llama", vocab_size=c["vocab_size"], d_model=c["hidden_size"],
                n_layers=c["num_hidden_layers"], n_heads=c["num_attention_heads"],
                n_kv_heads=c.get("num_key_value_heads") or c["num_attention_heads"],
                head_dim=c.get("head_dim"), d_ff=c["intermediate_size"],
                max_seq_len=c.get("max_position_embeddings", 2048),
                rope_theta=float(theta), rope_scaling=scaling,
                norm_eps=c.get("rms_norm_eps", 1e-6), qkv_bias=kind == "qwen2",
                tie_embeddings=c.get("tie_word_embeddings", False))
  else:
    raise ValueError(f"model_type={kind!r} is not supported (llama, qwen2, gpt2)")
  if unsupported:
    raise ValueError(f"{kind} config not supported: " + "; ".join(unsupported))
  return ModelConfig(**{**base, **overrides})


def config_to_hf(cfg: ModelConfig) -> dict:
  """The config.json dict of a causal LM with ``cfg``'s backbone."""
  common = dict(vocab_size=cfg.vocab_size, tie_word_embeddings=cfg.tie_embeddings,
                dtype=cfg.param_dtype)
  if cfg.family == "gpt2":
    return dict(common, model_type="gpt2", architectures=["GPT2LMHeadModel"],
                n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads,
                n_inner=cfg.d_ff, n_positions=cfg.max_seq_len,
                layer_norm_epsilon=cfg.norm_eps, activation_function="gelu_new")
  rope = {"rope_type": "default", **dict(cfg.rope_scaling or ()), "rope_theta": cfg.rope_theta}
  kind = "qwen2" if cfg.qkv_bias else "llama"
  out = dict(common, model_type=kind,
             architectures=["Qwen2ForCausalLM" if cfg.qkv_bias else "LlamaForCausalLM"],
             hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
             num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
             head_dim=cfg.dim_per_head, intermediate_size=cfg.d_ff,
             max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
             hidden_act="silu", rope_parameters=rope,
             rope_theta=cfg.rope_theta)  # top-level copy for transformers 4 readers
  if kind == "llama":
    out.update(attention_bias=False, mlp_bias=False)
  return out


# --------------------------------------------------------------------------- loading


def _init_leaves(cfg: ModelConfig, paths: list[Path], seed: int) -> list[jax.Array]:
  """The listed state leaves of ``Transformer(cfg, rngs=nnx.Rngs(seed))``.

  Built under jit: XLA drops every initialiser whose output is not asked for.
  """
  def init():
    flat = dict(nnx.to_flat_state(nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed)))))
    return [flat[p][...] if isinstance(flat[p], nnx.Variable) else flat[p] for p in paths]
  return jax.jit(init)() if paths else []


def from_hf_tensors(cfg: ModelConfig, shapes: Mapping[str, tuple],
                    read: Callable[[str], np.ndarray], seed: int = 0) -> Transformer:
  """A Transformer whose backbone comes from HF-named tensors.

  ``shapes`` maps each available HF tensor name to its shape; ``read(name)`` returns
  that tensor as a NumPy array (any float dtype; cast to ``cfg.param_dtype``). Names
  may lack the ``model.`` / ``transformer.`` prefix (base-model checkpoints). Raises
  ValueError naming every missing tensor (and then the unused ones) or every shape
  mismatch (expected vs found).
  """
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(seed)))
  graphdef, state = nnx.split(abstract)
  flat = nnx.to_flat_state(state)
  leaves = dict(zip(flat.paths, flat.leaves))
  rules = _rules(cfg)

  def resolve(name):  # base-model checkpoints drop the "model." / "transformer." prefix
    bare = name.split(".", 1)[1] if name.startswith(("model.", "transformer.")) else name
    return name if name in shapes else bare if bare in shapes else None

  missing, wrong, used = [], [], set()
  for rule in rules:
    for name, want in rule.hf.items():
      found = resolve(name)
      if found is None:
        missing.append(f"{name} {want}")
        continue
      used.add(found)
      if tuple(shapes[found]) != want:
        wrong.append(f"{name}: expected shape {want}, found {tuple(shapes[found])}")
  if missing or wrong:
    problems = []
    if missing:
      unused = sorted(n for n in shapes if n not in used and not n.endswith("inv_freq"))
      problems.append("missing tensors: " + ", ".join(missing) +
                      (f" (unused tensors in the checkpoint: {', '.join(unused)})"
                       if unused else ""))
    if wrong:
      problems.append("shape mismatches: " + "; ".join(wrong))
    raise ValueError("cannot load checkpoint: " + ". ".join(problems))

  values = {}
  for rule in rules:
    arrays = rule.load(*(np.asarray(read(resolve(name))) for name in rule.hf))
    for path, array in zip(rule.ours, arrays):
      if array.shape != leaves[path].shape:  # a rule out of step with the model's layout
        raise ValueError(f"{list(rule.hf)} converted to shape {array.shape}, but "
                         f"{'.'.join(map(str, path))} has shape {leaves[path].shape}")
      values[path] = jnp.asarray(array, leaves[path].dtype)
  rest = [p for p in flat.paths if p not in values]
  values.update(zip(rest, _init_leaves(cfg, rest, seed)))
  filled = [(p, leaf.replace(values[p]) if isinstance(leaf, nnx.Variable) else values[p])
            for p, leaf in zip(flat.paths, flat.leaves)]
  return nnx.merge(graphdef, nnx.from_flat_state(filled))


def load_hf(folder, *, seed: int = 0, **config_overrides) -> Transformer:
  """A Transformer from an HF folder: config.json and model.safetensors (or the shards
  listed in model.safetensors.index.json). Weights are cast to ``param_dtype``."""
  folder = pathlib.Path(folder)
  cfg = config_from_hf(json.loads((folder / "config.json").read_text()), **config_overrides)
  index = folder / "model.safetensors.index.json"
  if index.exists():
    files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
  else:
    files = sorted(f.name for f in folder.glob("*.safetensors"))
  if not files:
    raise FileNotFoundError(f"no *.safetensors files in {folder}")
  cpu = jax.devices("cpu")[0]
  with contextlib.ExitStack() as stack:
    handles, shapes = {}, {}
    for file in files:
      f = stack.enter_context(safetensors.safe_open(str(folder / file), framework="flax"))
      for name in f.keys():
        handles[name] = f
        shapes[name] = tuple(f.get_slice(name).get_shape())

    def read(name):  # framework="numpy" cannot read bfloat16; "flax" can, on the host.
      with jax.default_device(cpu):
        return np.asarray(handles[name].get_tensor(name))
    return from_hf_tensors(cfg, shapes, read, seed)


# --------------------------------------------------------------------------- saving


def save_hf(model: Transformer, folder) -> None:
  """Write config.json and model.safetensors of the causal LM (backbone + LM head).

  Reward and value heads are not written. Tied embeddings write no lm_head.weight.
  """
  cfg = model.cfg
  if not cfg.tie_embeddings and not cfg.lm_head:
    raise ValueError("cannot save a causal LM: model has untied embeddings and no lm_head")
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  safetensors.numpy.save_file(hf_tensors(model), str(folder / "model.safetensors"),
                              metadata={"format": "pt"})
  (folder / "config.json").write_text(json.dumps(config_to_hf(cfg), indent=2) + "\n")


def hf_tensors(model: Transformer, *, lm_head: bool = True) -> dict[str, np.ndarray]:
  """HF name -> NumPy array of the backbone and (``lm_head`` and untied) the LM head."""
  cfg = model.cfg if lm_head else model.cfg.replace(lm_head=False)
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  tensors = {}
  for rule in _rules(cfg):
    arrays = rule.save(*(np.asarray(flat[p][...]) for p in rule.ours))
    tensors.update((name, np.ascontiguousarray(a)) for name, a in zip(rule.hf, arrays))
  return tensors
