"""Hugging Face causal-LM checkpoints (config.json + safetensors) in and out, without torch.

Supported: ``llama`` and ``qwen2`` (our "llama" family) and ``gpt2``. Torch linear
weights are stored [out, in]; ours keep the input axis first and split heads out:
q/k/v [E, heads, D], o [H, D, E], MLP [E, F] / [F, E], lm_head [E, V]. GPT-2's Conv1D
weights are already [in, out]; its fused ``c_attn`` is split into q, k and v.

Loading builds the model abstractly (``nnx.eval_shape``) and fills its state from the
files, so no random initialisation of the backbone happens. Parameters a causal-LM
checkpoint cannot hold (reward and value heads requested by overrides) are initialised
as ``Transformer`` would with ``nnx.Rngs(seed)``, under jit so the rest is never built.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import safetensors
import safetensors.flax
from flax import nnx

from rmjax.models.config import ModelConfig
from rmjax.models.transformer import Transformer

Path = tuple  # a state path such as ("blocks", 0, "attn", "q")


class Rule(NamedTuple):
  """One HF tensor <-> one or more of our parameters.

  ``load(hf_array, our_shapes) -> tuple of our arrays``; ``save(*our_arrays) -> hf_array``.
  """
  hf: str
  ours: tuple[Path, ...]
  load: Callable
  save: Callable


def _copy(hf, path):  # same layout, reshaped if the sizes agree (e.g. bias [H*D] -> [H, D])
  return Rule(hf, (path,), lambda w, s: (w.reshape(s[0]),), lambda w: w)


def _flat(hf, path):  # ours [H, D] <-> HF [H*D]
  return Rule(hf, (path,), lambda w, s: (w.reshape(s[0]),), lambda w: w.reshape(-1))


def _torch_linear(hf, path):  # ours [in, *out] <-> torch [prod(out), in]
  return Rule(hf, (path,), lambda w, s: (w.T.reshape(s[0]),),
              lambda w: w.reshape(w.shape[0], -1).T)


def _torch_out_proj(hf, path):  # ours [H, D, E] <-> torch [E, H*D]
  return Rule(hf, (path,), lambda w, s: (w.T.reshape(s[0]),),
              lambda w: w.reshape(-1, w.shape[-1]).T)


def _conv1d(hf, path):  # ours [in, *out] <-> Conv1D [in, prod(out)]
  return Rule(hf, (path,), lambda w, s: (w.reshape(s[0]),),
              lambda w: w.reshape(w.shape[0], -1))


def _conv1d_out_proj(hf, path):  # ours [H, D, E] <-> Conv1D [H*D, E]
  return Rule(hf, (path,), lambda w, s: (w.reshape(s[0]),),
              lambda w: w.reshape(-1, w.shape[-1]))


def _fused_qkv(hf, paths):  # ours 3 x [E, H, D] (or biases 3 x [H, D]) <-> [..., 3*H*D]
  def load(w, shapes):
    return tuple(part.reshape(s) for part, s in zip(jnp.split(w, 3, axis=-1), shapes))

  def save(*parts):
    lead = parts[0].shape[:-2]
    return jnp.concatenate([p.reshape(*lead, -1) for p in parts], axis=-1)
  return Rule(hf, tuple(paths), load, save)


def _rules(cfg: ModelConfig) -> list[Rule]:
  """The HF name and layout transform of every backbone / LM-head parameter."""
  if cfg.family == "gpt2":
    p = "transformer."
    rules = [_copy(p + "wte.weight", ("embed",)), _copy(p + "wpe.weight", ("pos_embed",)),
             _copy(p + "ln_f.weight", ("final_norm", "scale")),
             _copy(p + "ln_f.bias", ("final_norm", "bias"))]
    for i in range(cfg.n_layers):
      h, b = f"{p}h.{i}.", ("blocks", i)
      rules += [
          _fused_qkv(h + "attn.c_attn.weight", [b + ("attn", n) for n in "qkv"]),
          _fused_qkv(h + "attn.c_attn.bias", [b + ("attn", n + "_bias") for n in "qkv"]),
          _conv1d_out_proj(h + "attn.c_proj.weight", b + ("attn", "o")),
          _copy(h + "attn.c_proj.bias", b + ("attn", "o_bias")),
          _conv1d(h + "mlp.c_fc.weight", b + ("mlp", "up")),
          _copy(h + "mlp.c_fc.bias", b + ("mlp", "up_bias")),
          _conv1d(h + "mlp.c_proj.weight", b + ("mlp", "down")),
          _copy(h + "mlp.c_proj.bias", b + ("mlp", "down_bias"))]
      for hf_norm, norm in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
        rules += [_copy(f"{h}{hf_norm}.weight", b + (norm, "scale")),
                  _copy(f"{h}{hf_norm}.bias", b + (norm, "bias"))]
  else:
    rules = [_copy("model.embed_tokens.weight", ("embed",)),
             _copy("model.norm.weight", ("final_norm", "scale"))]
    for i in range(cfg.n_layers):
      h, b = f"model.layers.{i}.", ("blocks", i)
      rules += [_copy(h + "input_layernorm.weight", b + ("attn_norm", "scale")),
                _copy(h + "post_attention_layernorm.weight", b + ("mlp_norm", "scale")),
                _torch_out_proj(h + "self_attn.o_proj.weight", b + ("attn", "o"))]
      for n in "qkv":
        rules.append(_torch_linear(f"{h}self_attn.{n}_proj.weight", b + ("attn", n)))
        if cfg.qkv_bias:
          rules.append(_flat(f"{h}self_attn.{n}_proj.bias", b + ("attn", n + "_bias")))
      for n in ("gate", "up", "down"):
        rules.append(_torch_linear(f"{h}mlp.{n}_proj.weight", b + ("mlp", n)))
  if cfg.lm_head and not cfg.tie_embeddings:
    rules.append(_torch_linear("lm_head.weight", ("lm_head",)))
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
                    read: Callable[[str], jax.Array], seed: int = 0) -> Transformer:
  """A Transformer whose backbone comes from HF-named tensors.

  ``shapes`` maps each available HF tensor name to its shape; ``read(name)`` returns
  that tensor (any array type). Names may lack the ``model.`` / ``transformer.``
  prefix (base-model checkpoints). Raises ValueError naming every missing tensor
  (and the file's unused ones) or every shape mismatch (expected vs found).
  """
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(seed)))
  graphdef, state = nnx.split(abstract)
  flat = nnx.to_flat_state(state)
  leaves = {p: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)
            for p, leaf in zip(flat.paths, flat.leaves)}
  rules = _rules(cfg)

  def resolve(name):  # base-model checkpoints drop the "model." / "transformer." prefix
    bare = name.split(".", 1)[1] if name.startswith(("model.", "transformer.")) else name
    return name if name in shapes else bare if bare in shapes else None

  missing, wrong, used = [], [], set()
  for rule in rules:
    want = tuple(jax.eval_shape(rule.save, *(leaves[p] for p in rule.ours)).shape)
    name = resolve(rule.hf)
    if name is None:
      missing.append(f"{rule.hf} {want}")
      continue
    used.add(name)
    if tuple(shapes[name]) != want:
      wrong.append(f"{rule.hf}: expected shape {want}, found {tuple(shapes[name])}")
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
    arrays = rule.load(jnp.asarray(read(resolve(rule.hf))), [leaves[p].shape for p in rule.ours])
    for path, array in zip(rule.ours, arrays):
      values[path] = jnp.asarray(array, leaves[path].dtype)
  rest = [p for p in flat.paths if p not in values]
  values.update(zip(rest, _init_leaves(cfg, rest, seed)))
  filled = [(p, leaf.replace(values[p]) if isinstance(leaf, nnx.Variable) else values[p])
            for p, leaf in zip(flat.paths, flat.leaves)]
  return nnx.merge(graphdef, nnx.from_flat_state(filled))


def load_hf(folder, *, seed: int = 0, **config_overrides) -> Transformer:
  """A Transformer from an HF folder: config.json and model.safetensors (or shards
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
  with contextlib.ExitStack() as stack:
    handles, shapes = {}, {}
    for file in files:
      f = stack.enter_context(safetensors.safe_open(str(folder / file), framework="flax"))
      for name in f.keys():
        handles[name] = f
        shapes[name] = tuple(f.get_slice(name).get_shape())
    return from_hf_tensors(cfg, shapes, lambda name: handles[name].get_tensor(name), seed)


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
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  tensors = {r.hf: r.save(*(flat[p][...] for p in r.ours)) for r in _rules(cfg)}
  safetensors.flax.save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
  (folder / "config.json").write_text(json.dumps(config_to_hf(cfg), indent=2) + "\n")
