"""Test-wide setup: eight host (CPU) devices, so that every mesh test runs anywhere.

XLA reads ``XLA_FLAGS`` when the first backend starts, so the flag is set here, before
any test module imports jax.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

# The team's real preference data, beside the checkout in a development tree; the tests
# that read it skip with a reason where it is absent (and RMJAX_SHARED_DATA is unset).
_SHARED_DATA = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                             "..", "..", "shared", "data"))
if "RMJAX_SHARED_DATA" not in os.environ and os.path.isdir(_SHARED_DATA):
  os.environ["RMJAX_SHARED_DATA"] = _SHARED_DATA

import jax  # noqa: E402  (after the flag)
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def eight_devices():
  """The first eight devices; skips where fewer exist (e.g. a single accelerator)."""
  devices = jax.devices()
  if len(devices) < 8:
    pytest.skip(f"needs 8 devices, found {len(devices)} ({devices[0].platform})")
  return devices[:8]
