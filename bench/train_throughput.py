"""Training throughput, memory and quality: sftlab against TRL's best CPU configuration.

    python bench/train_throughput.py --sweep-only   # find TRL's best configuration (stored)
    python bench/train_throughput.py --quick        # generated set, LoRA, 2 ABBA pairs (<10 min)
    python bench/train_throughput.py                # every case, 3 ABBA pairs each (~90 min)
    python bench/train_throughput.py --smoke        # wiring check on 8 rows (numbers mean nothing)

The parts live in bench/throughput/ (see bench/README.md for what each number means)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # makes `throughput` importable

from throughput.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
