"""Test-wide setup: eight host (CPU) devices, so that every mesh test runs anywhere, and
one persistent compilation cache per test session.

XLA reads ``XLA_FLAGS`` when the first backend starts, so the flag is set here, before
any test module imports jax. The cache directory is made by the first process that loads
this file (pytest's, before its xdist workers start) and inherited through the environment
by the workers and by the subprocesses the kill/resume, CLI and experiment tests start: they
compile the same tiny programs again and again. A size limit turns on JAX's file lock, so
that processes sharing the cache never read an entry another one is still writing. Set
``JAX_COMPILATION_CACHE_DIR`` to keep a cache of your own.
"""

import atexit
import os
import shutil
import tempfile

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

# The team's real preference data, beside the checkout in a development tree; the tests
# that read it skip with a reason where it is absent (and RMJAX_SHARED_DATA is unset).
_SHARED_DATA = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                             "..", "..", "shared", "data"))
if "RMJAX_SHARED_DATA" not in os.environ and os.path.isdir(_SHARED_DATA):
  os.environ["RMJAX_SHARED_DATA"] = _SHARED_DATA

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="rmjax-tests-jax-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)  # by the process that made it
for _name, _value in (("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0"),
                      ("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0"),
                      ("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))):
  os.environ.setdefault(_name, _value)

import jax  # noqa: E402  (after the flag)
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def eight_devices():
  """The first eight devices; skips where fewer exist (e.g. a single accelerator)."""
  devices = jax.devices()
  if len(devices) < 8:
    pytest.skip(f"needs 8 devices, found {len(devices)} ({devices[0].platform})")
  return devices[:8]
