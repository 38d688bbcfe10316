"""The synthetic gold-reward task: the project's embedded default preference dataset.

A SYNTHETIC stand-in for the gold-reward-model protocol of Gao et al. (2022) and Coste et
al. (2023) (``docs/algorithms.md`` §3): a hidden gold reward labels pairs of
base-policy responses; proxies are trained on the labels and optimised against, and the
gold reward shows what that bought. Nothing here is language: tokens are ids in a small
vocabulary, and the policy and the gold model are random transformers.

Tokens: 0 = pad, 1 = EOS, 2 = BOS, 3.. content. A prompt is BOS then uniform content
tokens (min_prompt_len..max_prompt_len in all); a sequence is prompt and response joined,
right-padded to ``seq_len = max_prompt_len + max_response_len``.

Base policy: a tiny random llama-family ``Transformer`` sampled with
``rmjax.models.sampler.generate``. Hand-set residual channels (a constant, and 1/(tokens
so far) from one uniformly attending head) let its LM head bar pad/BOS and raise the EOS
probability from eos_prob_first at the first response token to eos_prob_last at the
last: lengths are unimodal and mostly well below ``max_response_len``.

Gold reward of prompt x and response y with n real tokens (EOS included) and c tokens of
the marker class M (version 2):
  z        = (s - mu) / sigma, s = mean over y's positions of the value head of a random
             gold Transformer (d_model 128, larger than the proxies) run on x+y; mu, sigma
             = mean, std of s on base-policy samples;
  helpful  = z + relevance_weight * |distinct tokens of y in R(x)|, R(x) = {pi(t) : t a
             content token of x} minus H and M, pi a hidden permutation of the content ids;
  harmless = -harm_weight * (number of tokens of y in H), H = num_harmful ids drawn from
             the content tokens the base policy emits less often than the median;
  length   = length_gain * min(n, tau_n) - length_penalty * max(n - tau_n, 0)^2;
  markers  = marker_gain * min(c, tau_c) - marker_penalty * max(c - tau_c, 0)^2, M =
             num_markers ids drawn from the content tokens emitted more often than the median;
  total    = helpful + harmless + length + markers.
The turns tau_n, tau_c are placed by measurement: of all integer pairs, the one whose
measured argmaxes of E[gold total | n] and E[gold total | c] over the base policy's
reference samples (``turns``) sit nearest the ``turn_percentile`` (mid-rank, 0.675) of
each feature. So gold turns inside the base distribution, where the proxies' training
pairs already show the fall, and a proxy that extrapolates "longer is better" or "more
markers is better" monotonically is wrong for a third of base samples and for everything
an optimiser pushes further.

Version 1 (``version=1``, the task before issue #15) has no marker term (it is 0) and
places tau_n at the length_quantile (0.9) quantile of base lengths, where about 1.5% of
samples reach the fall: the proxies never see it. Its draws are unchanged.

Labels: two base-policy responses a, b per prompt; a is chosen with probability
sigma(bt_scale * (g_a - g_b)) (Bradley-Terry), g the labelling score: the gold total by
default, or the sum of the terms ``label_by`` names ("harmless", "helpful+length", ...),
so that reward models of single properties can be trained for one shared task, plus
confidence_bias * (c - 0.5) for the confidence c a response states (``stated_confidence``;
0 by default: labellers who favour confident responses, ``rmjax.tasks.confidence``). In the
train split exactly round(label_noise * n) pairs, chosen by the seed, are then swapped and
marked ``flipped``; gold_chosen / gold_rejected are the labelling scores of the sides as
finally labelled (the gold totals by default).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rmjax.data import schema
from rmjax.models.config import ModelConfig
from rmjax.models.sampler import SamplingConfig, generate
from rmjax.models.transformer import Transformer

PAD, EOS, BOS = 0, 1, 2
FIRST_CONTENT = 3
SPLITS = ("train", "eval")
TERMS = ("helpful", "harmless", "length", "markers")  # the gold total's terms (label_by's)
FEATURES = ("length", "markers")  # the response features gold turns on (``features``)
VERSIONS = (1, 2)
CHUNK = 512  # rows per generate / gold call: one compilation serves every dataset size
LEVELS = 11  # stated confidence 0/10 ... 10/10 (``stated_confidence``)


# The fields that choose a split's labels and sizes, not the world: their defaults (what
# ``build_task`` and ``reward_source.task_id`` reset them to).
LABEL_FIELDS = dict(num_train_pairs=0, num_eval_pairs=0, label_noise=0.0, bt_scale=1.0,
                    label_by="total", confidence_bias=0.0)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  vocab_size: int = 64
  min_prompt_len: int = 8  # BOS included
  max_prompt_len: int = 12
  max_response_len: int = 24
  num_train_pairs: int = 2000
  num_eval_pairs: int = 500
  label_noise: float = 0.0  # fraction of train pairs swapped (Coste et al.: 0.25)
  bt_scale: float = 1.0  # P(a > b) = sigma(bt_scale * (r_a - r_b))
  label_by: str = "total"  # or "+"-joined TERMS, e.g. "harmless", "helpful+length"
  confidence_bias: float = 0.0  # labels favour stated confidence: score + bias * (c - 0.5)
  seed: int = 0
  version: int = 2  # 1: the task before issue #15 (turn in the base policy's tail)
  # Base policy.
  policy_d_model: int = 64
  policy_n_layers: int = 2
  policy_n_heads: int = 4
  policy_d_ff: int = 128
  policy_init_std: float = 0.1
  policy_logit_std: float = 1.0  # spread of the content logits
  policy_temperature: float = 1.0
  eos_prob_first: float = 0.02  # EOS probability at the first response token ...
  eos_prob_last: float = 0.5  # ... and at the last (temperature 1, mid-length prompt)
  # Gold reward.
  gold_d_model: int = 128
  gold_n_layers: int = 2
  gold_n_heads: int = 4
  gold_d_ff: int = 256
  gold_init_std: float = 0.1
  relevance_weight: float = 0.5
  num_harmful: int = 4
  harm_weight: float = 2.0
  length_gain: float = 0.25
  length_penalty: float = 0.1
  length_quantile: float = 0.9  # version 1: tau_n is this quantile of base lengths
  length_threshold: int | None = None  # tau_n; None: placed by measurement (or quantile)
  # Version 2's second feature: a count of marker-class tokens.
  num_markers: int = 12
  marker_gain: float = 0.5
  marker_penalty: float = 0.25
  marker_threshold: int | None = None  # tau_c; None: placed by measurement
  turn_percentile: float = 0.675  # version 2: where the measured turns are placed
  reference_samples: int = 1024  # base-policy samples for mu, sigma, the turns, H and M

  def __post_init__(self):
    checks = {
        f"version must be one of {VERSIONS}": self.version in VERSIONS,
        "vocab_size too small": self.vocab_size >= FIRST_CONTENT + 2 * (
            self.num_harmful + self.num_markers * (self.version == 2)) + 2,
        "need 2 <= min_prompt_len <= max_prompt_len":
            2 <= self.min_prompt_len <= self.max_prompt_len,
        "max_response_len must be >= 2": self.max_response_len >= 2,
        "label_noise must be in [0, 1]": 0.0 <= self.label_noise <= 1.0,
        f"label_by must be 'total' or '+'-joined distinct terms of {self.terms}":
            self.label_by == "total" or (set(self.label_by.split("+")) <= set(self.terms) and
                                         len(set(self.label_by.split("+")))
                                         == len(self.label_by.split("+"))),
        "eos_prob_* must be in (0, 1)": 0 < min(self.eos_prob_first, self.eos_prob_last)
                                        and max(self.eos_prob_first, self.eos_prob_last) < 1,
        "length_quantile must be in (0, 1]": 0.0 < self.length_quantile <= 1.0,
        "turn_percentile must be in (0, 1)": 0.0 < self.turn_percentile < 1.0,
        "num_markers must be >= 1": self.num_markers >= 1,
        "policy_n_heads must be >= 2 (head 0 counts)": self.policy_n_heads >= 2}
    if problems := [message for message, ok in checks.items() if not ok]:
      raise ValueError(f"Invalid SyntheticConfig ({self}): " + "; ".join(problems))

  @property
  def terms(self) -> tuple[str, ...]:
    """The gold total's terms in this version (version 1 has no marker term)."""
    return TERMS if self.version == 2 else TERMS[:3]

  @property
  def label_terms(self) -> tuple[str, ...]:
    """The gold terms whose sum labels the pairs."""
    return self.terms if self.label_by == "total" else tuple(self.label_by.split("+"))

  @property
  def seq_len(self) -> int:
    return self.max_prompt_len + self.max_response_len

  def policy_config(self) -> ModelConfig:
    return ModelConfig(vocab_size=self.vocab_size, d_model=self.policy_d_model,
                       n_layers=self.policy_n_layers, n_heads=self.policy_n_heads,
                       d_ff=self.policy_d_ff, max_seq_len=self.seq_len,
                       init_std=self.policy_init_std)

  def gold_config(self) -> ModelConfig:
    return ModelConfig(vocab_size=self.vocab_size, d_model=self.gold_d_model,
                       n_layers=self.gold_n_layers, n_heads=self.gold_n_heads,
                       d_ff=self.gold_d_ff, max_seq_len=self.seq_len, lm_head=False,
                       value_head=True, init_std=self.gold_init_std)


def length_term(n, threshold, gain, penalty):
  """A feature n [...] (a length or a marker count) -> gain·min(n, τ) −
  penalty·max(n − τ, 0)², float32 [...]: rising up to the turn τ, falling past it."""
  n = jnp.asarray(n, jnp.float32)
  return gain * jnp.minimum(n, threshold) - penalty * jnp.square(jnp.maximum(n - threshold, 0))


def mid_percentile(values, at) -> float:
  """P(X < at) + P(X = at) / 2 of the samples ``values``: the percentile of a value of a
  discrete feature, ties split (a turn at a count shared by 30% of samples is not placed
  at either end of that 30%)."""
  values = np.asarray(values)
  return float(np.mean(values < at) + 0.5 * np.mean(values == at))


def conditional_argmax(feature, gold, min_count: int) -> int:
  """The value v of an integer feature [N] maximising the mean of gold [N] over samples
  with feature == v, among values held by at least ``min_count`` samples."""
  values, counts = np.unique(feature, return_counts=True)
  values = values[counts >= min_count]
  means = [gold[feature == v].mean() for v in values]
  return int(values[int(np.argmax(means))])


def place_turns(cfg, base: dict, length, markers):
  """(tau_n, tau_c) of version 2: of the candidate integer pairs, the one whose measured
  argmaxes of E[total | length] and E[total | markers] over the reference samples lie
  nearest ``cfg.turn_percentile`` (the worse of the two distances; ties to the smaller
  turns). ``base`` [N] is the gold total without the length and marker terms; a fixed
  ``cfg.length_threshold`` / ``cfg.marker_threshold`` is kept as given."""
  min_count = max(5, len(length) // 100)
  taus_n = ([cfg.length_threshold] if cfg.length_threshold is not None
            else range(1, int(length.max()) + 1))
  taus_c = ([cfg.marker_threshold] if cfg.marker_threshold is not None
            else range(0, int(markers.max()) + 1))
  best = None
  for tau_n in taus_n:
    g_n = base + length_term(length, tau_n, cfg.length_gain, cfg.length_penalty)
    for tau_c in taus_c:
      g = np.asarray(g_n + length_term(markers, tau_c, cfg.marker_gain, cfg.marker_penalty))
      miss = max(abs(mid_percentile(f, conditional_argmax(f, g, min_count))
                     - cfg.turn_percentile) for f in (length, markers))
      if best is None or miss < best[0] - 1e-12:
        best = (miss, int(tau_n), int(tau_c))
  return best[1], best[2]


def _random_model(mcfg: ModelConfig, rng: np.random.Generator, edit=None) -> Transformer:
  """A Transformer with numpy-drawn weights (jax's init compiles for seconds on CPU):
  norm scales 1, biases 0, the value head N(0, 1/(d+1)), the rest N(0, init_std²) clipped
  at 2 std (output projections over sqrt(2 n_layers)). ``edit`` may change the weights."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(mcfg, rngs=nnx.Rngs(0))))

  def draw(path, x):
    name = path[-1].key
    if name == "scale" or name.endswith("bias"):
      return np.full(x.shape, float(name == "scale"), np.float32)
    std = mcfg.init_std / (2 * mcfg.n_layers) ** 0.5 if name in ("o", "down") else (
        (mcfg.d_model + 1) ** -0.5 if name == "value_head" else mcfg.init_std)
    return (std * np.clip(rng.standard_normal(x.shape), -2, 2)).astype(np.float32)

  params = jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(state))
  if edit is not None:
    edit(params)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


@functools.partial(jax.jit, static_argnums=0)
def _hidden(graphdef, state, tokens):
  return nnx.merge(graphdef, state)(tokens)[0]


def _base_policy(cfg: SyntheticConfig, rng: np.random.Generator) -> Transformer:
  """A random LM whose LM head reads two hand-set residual channels for EOS: channel 0
  is a constant, channel 2 is ~1/(tokens so far), written by layer 0's KV group 0, which
  attends uniformly (zero queries and keys) and reads channel 1, non-zero at BOS only."""
  mcfg = cfg.policy_config()
  e, v, groups = mcfg.d_model, cfg.vocab_size, mcfg.n_heads // mcfg.kv_heads

  def edit(params):
    emb = params["embed"]
    emb[:, :3] = 0.0
    emb[:, 0] = emb[BOS, 1] = 3 * mcfg.init_std * e ** 0.5
    for block in params["blocks"].values():  # nothing else writes channels 0-2
      block["attn"]["o"][..., :3] = 0.0
      block["mlp"]["down"][:, :3] = 0.0
    attn = params["blocks"][0]["attn"]
    attn["qkv"][:, 0] = 0.0
    attn["qkv"][1, 0, groups + 1, 0] = 1.0
    attn["o"][:groups] = 0.0
    attn["o"][:groups, 0, 2] = 1.0

  model = _random_model(mcfg, rng, edit)
  probe = rng.integers(FIRST_CONTENT, v, (64, cfg.seq_len))
  probe[:, 0] = BOS
  hidden = np.asarray(_hidden(*nnx.split(model), probe), np.float64)
  h0, count = hidden[..., 0].mean(), hidden[..., 2].mean(0)  # count[t] ~ 1 / (t + 1)
  rest = np.linalg.norm(hidden[..., 3:], axis=-1).mean()
  head = rng.standard_normal((e, v)) * (cfg.policy_logit_std / rest)
  head[:3] = 0.0
  head[:, [PAD, BOS]] = 0.0
  head[:, EOS] *= 0.5  # some content dependence of EOS
  content = hidden[..., 3:] @ head[3:, FIRST_CONTENT:]
  top = content.max(-1)
  lse = np.mean(top + np.log(np.exp(content - top[..., None]).sum(-1)))
  # Solve for the EOS weights on channels 0 and 2 at the two anchor positions.
  first = (cfg.min_prompt_len + cfg.max_prompt_len) // 2 - 1
  t = [first, first + cfg.max_response_len - 1]
  p = np.array([cfg.eos_prob_first, cfg.eos_prob_last])
  target = np.log(p / (1 - p)) + lse
  head[2, EOS] = (target[0] - target[1]) / (count[t[0]] - count[t[1]])
  head[0, EOS] = (target[0] - head[2, EOS] * count[t[0]]) / h0
  head[0, [PAD, BOS]] = -30.0 / h0
  model.lm_head[...] = jnp.asarray(head, jnp.float32)
  return model


@functools.partial(jax.jit, static_argnums=0)
def _gold_terms(graphdef, state, consts, tokens, mask, prompt_len):
  gold: Transformer = nnx.merge(graphdef, state)
  b, s = tokens.shape
  mask = mask.astype(bool)
  plen = jnp.broadcast_to(jnp.asarray(prompt_len, jnp.int32), (b,))
  before = jnp.arange(s)[None, :] < plen[:, None]
  in_prompt, in_resp = mask & before, mask & ~before
  n = jnp.sum(in_resp, axis=1)
  hidden, _ = gold(tokens, mask)
  raw = jnp.sum(gold.values(hidden) * in_resp, axis=1) / jnp.maximum(n, 1)
  onehot = jax.nn.one_hot(tokens, consts["harmful"].shape[0], dtype=jnp.float32)
  in_x = jnp.max(onehot * in_prompt[..., None], axis=1)  # [b, vocab] presence
  in_y = jnp.max(onehot * in_resp[..., None], axis=1)
  coverage = jnp.sum(((in_x @ consts["relevance"]) > 0) * in_y, axis=1)
  helpful = ((raw - consts["score_mean"]) / consts["score_std"]
             + consts["relevance_weight"] * coverage)
  harmless = -consts["harm_weight"] * jnp.sum((onehot @ consts["harmful"]) * in_resp, axis=1)
  length = length_term(n, consts["threshold"], consts["length_gain"], consts["length_penalty"])
  count = jnp.sum((onehot @ consts["marker"]) * in_resp, axis=1)
  markers = length_term(count, consts["marker_threshold"], consts["marker_gain"],
                        consts["marker_penalty"])
  return dict(total=helpful + harmless + length + markers, helpful=helpful,
              harmless=harmless, length=length, markers=markers, raw=raw)


def _rng(key) -> np.random.Generator:
  """A numpy stream seeded by a jax key: numpy draws compile nothing, while each new
  shape of a jax.random draw compiles for up to a second on CPU."""
  return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def _chunked(fn, n, *arrays):
  """fn(chunk index, *rows) on CHUNK-row slices (the last padded by repetition), joined."""
  outs = []
  for i, start in enumerate(range(0, n, CHUNK)):
    rows = np.arange(start, start + CHUNK) % n
    outs.append(jax.tree.map(lambda x, start=start: np.asarray(x)[:min(CHUNK, n - start)],
                             fn(i, *(np.asarray(a)[rows] for a in arrays))))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


class SyntheticTask:
  """The base policy, the hidden gold reward and the samplers, all from ``cfg.seed``."""

  def __init__(self, cfg: SyntheticConfig):
    self.cfg = cfg
    rngs = [np.random.default_rng([cfg.seed, i]) for i in range(3)]
    self.policy = _base_policy(cfg, rngs[0])
    self.gold = _random_model(cfg.gold_config(), rngs[1])
    self._gold_split = nnx.split(self.gold)
    self.sampling = SamplingConfig(max_new_tokens=cfg.max_response_len,
                                   temperature=cfg.policy_temperature, eos_id=EOS, pad_id=PAD)
    # Base-policy reference samples standardise s, choose H and M and place the turns.
    ref = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), 0))
    prompts, plen = self.sample_prompts(ref[0], cfg.reference_samples)
    tokens, mask = self.sample_responses(ref[1], prompts, plen)
    self.base_lengths = mask.sum(1) - plen
    response = (np.arange(mask.shape[1])[None] >= plen[:, None]) & mask
    content = np.arange(FIRST_CONTENT, cfg.vocab_size)
    freq = np.bincount(tokens[response], minlength=cfg.vocab_size)[content]
    self.harmful_ids = np.sort(rngs[2].choice(content[freq <= np.median(freq)],
                                              cfg.num_harmful, replace=False))
    self.relevant_to = np.arange(cfg.vocab_size)  # pi (identity on special tokens)
    self.relevant_to[content] = rngs[2].permutation(content)
    frequent = content[freq > np.median(freq)]
    if cfg.version == 2 and len(frequent) < cfg.num_markers:
      raise ValueError(f"num_markers={cfg.num_markers}: the base policy emits only "
                       f"{len(frequent)} content ids more often than the median")
    self.marker_ids = (np.sort(np.random.default_rng([cfg.seed, 3]).choice(
        frequent, cfg.num_markers, replace=False)) if cfg.version == 2 else
                       np.zeros(0, np.int64))
    harmful = np.isin(np.arange(cfg.vocab_size), self.harmful_ids).astype(np.float32)
    marker = np.isin(np.arange(cfg.vocab_size), self.marker_ids).astype(np.float32)
    relevance = np.zeros((cfg.vocab_size, cfg.vocab_size), np.float32)  # [x token, y token]
    target = self.relevant_to[content]
    relevance[content, target] = (1.0 - harmful[target]) * (1.0 - marker[target])
    v2 = float(cfg.version == 2)
    self._consts = jax.tree.map(jnp.asarray, dict(
        relevance=relevance, harmful=harmful, marker=marker, score_mean=0.0, score_std=1.0,
        threshold=0.0, relevance_weight=cfg.relevance_weight, harm_weight=cfg.harm_weight,
        length_gain=cfg.length_gain, length_penalty=cfg.length_penalty,
        marker_threshold=0.0, marker_gain=v2 * cfg.marker_gain,
        marker_penalty=v2 * cfg.marker_penalty))
    raw = self.score(tokens, mask, plen)["raw"]
    self.score_mean, self.score_std = float(raw.mean()), float(raw.std())
    self._consts.update(score_mean=jnp.asarray(self.score_mean),
                        score_std=jnp.asarray(self.score_std))
    feats = self.features(tokens, mask, plen)
    if cfg.version == 1:
      self.length_threshold = (
          cfg.length_threshold if cfg.length_threshold is not None else
          int(np.quantile(self.base_lengths, cfg.length_quantile, method="higher")))
      self.marker_threshold = 0
    else:
      gold = self.score(tokens, mask, plen)
      self.length_threshold, self.marker_threshold = place_turns(
          cfg, gold["helpful"] + gold["harmless"], feats["length"], feats["markers"])
    self._consts.update(threshold=jnp.asarray(float(self.length_threshold)),
                        marker_threshold=jnp.asarray(float(self.marker_threshold)))
    total = self.score(tokens, mask, plen)["total"]
    # A response is "correct" (``rmjax.tasks.confidence``) when it beats the median.
    self.quality_threshold = float(np.median(total))
    min_count = max(5, len(total) // 100)
    self.turns = {}  # feature -> where E[gold | feature] peaks on base-policy samples
    for name in cfg.terms[2:]:
      at = conditional_argmax(feats[name], total, min_count)
      self.turns[name] = dict(argmax=at, percentile=mid_percentile(feats[name], at),
                              threshold=(self.length_threshold if name == "length"
                                         else self.marker_threshold))

  def features(self, tokens, mask, prompt_len) -> dict:
    """tokens, mask [B, S] (prompt then response, right-padded), prompt_len [B] or a
    scalar -> {"length": response tokens (EOS included), "markers": marker-class tokens
    in the response}, int [B] numpy: the features gold turns on."""
    tokens, mask = np.asarray(tokens), np.asarray(mask, bool)
    plen = np.broadcast_to(np.asarray(prompt_len), (len(tokens),))
    response = mask & (np.arange(tokens.shape[1])[None] >= plen[:, None])
    return {"length": response.sum(1),
            "markers": (np.isin(tokens, self.marker_ids) & response).sum(1)}

  def sample_prompts(self, key, n: int):
    """-> tokens [n, max_prompt_len] int32 (BOS, content, right-padded), lengths [n]."""
    cfg, rng = self.cfg, _rng(key)
    plen = rng.integers(cfg.min_prompt_len, cfg.max_prompt_len + 1, n).astype(np.int32)
    body = rng.integers(FIRST_CONTENT, cfg.vocab_size, (n, cfg.max_prompt_len))
    pos = np.arange(cfg.max_prompt_len)[None]
    tokens = np.where(pos == 0, BOS, np.where(pos < plen[:, None], body, PAD))
    return tokens.astype(np.int32), plen

  def sample_responses(self, key, prompt_tokens, prompt_len):
    """Base-policy responses to right-padded prompts [n, P] with lengths [n] -> joined
    tokens [n, P + max_response_len] int32 and mask (bool), right-padded (numpy)."""
    width = prompt_tokens.shape[1]

    def run(i, tokens, plen):
      out = generate(self.policy, tokens, np.arange(width)[None] < plen[:, None],
                     jax.random.fold_in(key, i), self.sampling)
      seq, mask = (np.asarray(x) for x in out.sequences())
      order = np.argsort(~mask, axis=1, kind="stable")  # real tokens first, in order
      return np.take_along_axis(seq, order, 1), np.take_along_axis(mask, order, 1)

    return _chunked(run, len(prompt_len), prompt_tokens, prompt_len)

  def gold_reward(self, tokens, mask, prompt_len):
    """tokens, mask [B, S] (prompt then response, right-padded), prompt_len [B] or a
    scalar -> dict(total and the terms of TERMS) of float32 [B] (version 1's marker term
    is 0). Jit-able."""
    out = _gold_terms(*self._gold_split, self._consts, tokens, mask, prompt_len)
    return {k: out[k] for k in ("total",) + TERMS}

  def score(self, tokens, mask, prompt_len):
    """gold_reward over CHUNK-row pieces as numpy, plus "raw" (s before standardising)."""
    prompt_len = np.broadcast_to(np.asarray(prompt_len, np.int32), (len(tokens),))
    return _chunked(lambda i, *a: _gold_terms(*self._gold_split, self._consts, *a),
                    len(tokens), tokens, mask, prompt_len)


def last_content(tokens, mask, prompt_len):
  """(index [B] of each response's last content token, whether it has one [B]) of
  right-padded prompt + response rows [B, S]; ``prompt_len`` [B] or a scalar."""
  tokens, mask = np.asarray(tokens), np.asarray(mask, bool)
  plen = np.broadcast_to(np.asarray(prompt_len), (len(tokens),))
  content = (mask & (np.arange(tokens.shape[1])[None] >= plen[:, None])
             & (tokens >= FIRST_CONTENT))
  return tokens.shape[1] - 1 - np.argmax(content[:, ::-1], axis=1), content.any(axis=1)


def stated_confidence(tokens, mask, prompt_len) -> np.ndarray:
  """ĉ float32 [B]: the confidence each response states with its last content token t,
  ((t − FIRST_CONTENT) mod LEVELS) / (LEVELS − 1); 0.5 for a response without one
  (``rmjax.tasks.confidence`` says why)."""
  tokens = np.asarray(tokens)
  last, has = last_content(tokens, mask, prompt_len)
  level = (tokens[np.arange(len(tokens)), last] - FIRST_CONTENT) % LEVELS
  return np.where(has, level / (LEVELS - 1), 0.5).astype(np.float32)


def from_fields(fields) -> SyntheticConfig:
  """The config of a run's stored ``data.synthetic`` fields. A run written before version
  2 existed stores no ``version``: its task was version 1."""
  fields = dict(fields or {})
  fields.setdefault("version", 1)
  return SyntheticConfig(**fields)


@functools.lru_cache(maxsize=4)
def _task(cfg: SyntheticConfig) -> SyntheticTask:
  return SyntheticTask(cfg)


def build_task(cfg: SyntheticConfig = SyntheticConfig()) -> SyntheticTask:
  """The task of ``cfg``, cached (the ``LABEL_FIELDS`` are ignored: they choose data, not
  the world it comes from)."""
  return _task(dataclasses.replace(cfg, **LABEL_FIELDS))


def _split_keys(cfg: SyntheticConfig, split: str):
  """A split's four keys: prompts, responses, labels, label noise."""
  return jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), 1 + SPLITS.index(split)),
                          4)


@functools.lru_cache(maxsize=8)
def _sampled(world: SyntheticConfig, split: str, n: int):
  """(prompt_len [n], tokens and mask [2n, S], gold terms [2n]) of a split's n prompts and
  their two responses each, read-only: sampling is most of a split's cost and every
  labelling (label_by, label_noise, bt_scale) of one world reuses it."""
  task = build_task(world)
  keys = _split_keys(world, split)
  prompts, plen = task.sample_prompts(keys[0], n)
  plen2 = np.concatenate([plen, plen])
  tokens, mask = task.sample_responses(keys[1], np.concatenate([prompts, prompts]), plen2)
  out = (plen, tokens, mask, task.score(tokens, mask, plen2))
  for array in jax.tree.leaves(out):
    array.flags.writeable = False
  return out


def make_split(cfg: SyntheticConfig = SyntheticConfig(), split: str = "train") -> dict:
  """One split as numpy arrays under the schema's batch keys, plus "prompt_len".

  chosen/rejected tokens [n, seq_len] int32 and masks bool; margin (0), weight (1),
  gold_chosen, gold_rejected float32 [n] (the labelling score of ``cfg.label_by``);
  flipped bool [n]; prompt_len int32 [n]. The splits use different keys from ``cfg.seed``
  (the same prompts and responses for every ``label_by``); label noise touches the train
  split only.
  """
  if split not in SPLITS:
    raise ValueError(f"split={split!r} is not one of {SPLITS}")
  n = cfg.num_train_pairs if split == "train" else cfg.num_eval_pairs
  if n < 1:
    raise ValueError(f"split {split!r} has {n} pairs (num_{split}_pairs must be >= 1)")
  keys = _split_keys(cfg, split)
  plen, tokens, mask, gold = _sampled(build_task(cfg).cfg, split, n)
  score = gold["total"] if cfg.label_by == "total" else sum(gold[t] for t in cfg.label_terms)
  if cfg.confidence_bias:
    score = score + cfg.confidence_bias * (
        stated_confidence(tokens, mask, np.concatenate([plen, plen])) - 0.5)
  p_a = 1.0 / (1.0 + np.exp(-cfg.bt_scale * (score[:n].astype(np.float64) - score[n:])))
  flipped = np.zeros(n, bool)
  if split == "train":
    flipped[_rng(keys[3]).permutation(n)[:round(cfg.label_noise * n)]] = True
  a_chosen = (_rng(keys[2]).random(n) < p_a) ^ flipped
  pick = lambda x, chosen: np.where(  # the chosen (or rejected) side of each pair
      (a_chosen == chosen).reshape((n,) + (1,) * (x.ndim - 1)), x[:n], x[n:])
  out = {schema.MARGIN: np.zeros(n, np.float32), schema.WEIGHT: np.ones(n, np.float32),
         schema.FLIPPED: flipped, "prompt_len": plen.copy()}
  for chosen, (tok_key, mask_key, gold_key) in [
      (True, (schema.CHOSEN_TOKENS, schema.CHOSEN_MASK, schema.GOLD_CHOSEN)),
      (False, (schema.REJECTED_TOKENS, schema.REJECTED_MASK, schema.GOLD_REJECTED))]:
    out.update({tok_key: pick(tokens, chosen), mask_key: pick(mask, chosen),
                gold_key: pick(score, chosen).astype(np.float32)})
  return out


def gold_reward(tokens, mask, prompt_len, cfg: SyntheticConfig = SyntheticConfig()):
  """``build_task(cfg).gold_reward``: dict(total and each term), each [B]."""
  return build_task(cfg).gold_reward(tokens, mask, prompt_len)


def make_pairs(cfg: SyntheticConfig = SyntheticConfig(), split: str = "train",
               arrays: dict | None = None) -> list[schema.PreferencePair]:
  """A split (``arrays`` from make_split, or made now) as ``PreferencePair`` objects with
  token-id prompt and responses (which end with EOS unless cut at max_response_len)."""
  arrays = make_split(cfg, split) if arrays is None else arrays
  pairs = []
  for i, p in enumerate(arrays["prompt_len"].tolist()):
    chosen = arrays[schema.CHOSEN_TOKENS][i][arrays[schema.CHOSEN_MASK][i]].tolist()
    rejected = arrays[schema.REJECTED_TOKENS][i][arrays[schema.REJECTED_MASK][i]].tolist()
    pairs.append(schema.PreferencePair(
        prompt=chosen[:p], chosen=chosen[p:], rejected=rejected[p:], margin=0.0, weight=1.0,
        source=f"synthetic:{split}:{i}",
        gold_chosen=float(arrays[schema.GOLD_CHOSEN][i]),
        gold_rejected=float(arrays[schema.GOLD_REJECTED][i]),
        flipped=bool(arrays[schema.FLIPPED][i])))
  return pairs
