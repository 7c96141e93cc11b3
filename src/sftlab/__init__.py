"""sftlab: supervised fine-tuning of causal language models, correct by construction."""

__version__ = "0.1.0"

import os as _os

# oneDNN (bf16 matrix products on CPU) caches one primitive per input shape, 1,024 by default,
# each holding memory; micro-batches of varying lengths filled it and resident memory grew by
# ~1 GB over a run. 64 kept the same speed (measured, see bench/README.md). Read by oneDNN at its
# first use, so setting it on import is early enough; a user's own setting wins.
_os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
